"""Smoke test of the similarity-stage benchmark (benchmarks/similarity.py): tiny sizes, every method, finite numbers."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_similarity", ROOT / "benchmarks" / "similarity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_has_every_method(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--n", "64", "--shapes", "msrvtt", "--reps", "1", "--search-n", "32",
                       "--inprocess", "--threads", "1", "--max-run-s", "0.3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    shape = report["tables"]["fp32"]["msrvtt"]
    methods = [r["method"] for r in shape["results"]]
    assert methods == bench.all_methods()
    assert {"glccl", "glccl_naive", "meanp", "xpool"} <= set(methods)
    for r in shape["results"]:
        assert f"| {r['method']} |" in printed
        for key in ("wall_s", "cpu_s", "flops", "peak_bytes", "rate_at_run"):
            assert math.isfinite(r[key]) and r[key] >= 0, (r["method"], key, r[key])
        assert r["flops"] > 0 and 1 <= r["timed"] <= 64
        d = shape["derived"][r["method"]]
        assert all(math.isfinite(v) and v > 0 for v in d.values()), (r["method"], d)
    assert shape["rate"] > 0 and shape["cpu_rate"] > 0
    assert any("floor at the MSR-VTT shape" in t for t in report["targets"])
    s = report["search"]
    assert s["n"] == 32 and s["exhaustive_s"] > 0 and len(s["rows"]) == 6
    for row in s["rows"]:
        assert all(0.0 <= v <= 1.0 for v in row["recall"].values())
        assert math.isfinite(row["speedup"]) and row["speedup"] > 0
    full = [row for row in s["rows"] if row["shortlist"] == 32]
    assert full and all(v == 1.0 for row in full for v in row["recall"].values())  # shortlist = gallery: exact
    assert "recall@10" in printed and "speed-up" in printed


def test_worker_subprocess_measures_memory(bench):
    r = bench._worker_call({"kind": "measure", "method": "glccl", "shape_name": "msrvtt", "n": 16, "reps": 1,
                            "max_run_s": 60.0, "rate_s": 0.05, "threads": 1}, inprocess=False)
    assert r["method"] == "glccl" and r["timed"] == 16 and r["wall_s"] > 0
    # the 16 x 16 GLCCL run allocates its work blocks (MBs): a positive, bounded peak
    assert 0 < r["peak_bytes"] < 2e9


def test_fit_extrapolate(bench):
    # t(m) = 2 m + 0.5 m^2 exactly: the fit recovers it
    pts = [(m, 2 * m + 0.5 * m * m) for m in (10, 20, 40)]
    t, a, b = bench.fit_extrapolate(pts, 1000)
    assert a == pytest.approx(2) and b == pytest.approx(0.5) and t == pytest.approx(2000 + 500_000)
    # purely per-item work (no growth with pairs) is extrapolated linearly, not quadratically
    t, a, b = bench.fit_extrapolate([(16, 1.6), (32, 3.2), (64, 6.4)], 1000)
    assert b == pytest.approx(0, abs=1e-9) and t == pytest.approx(100.0)
    # a single size: per-pair scaling
    assert bench.fit_extrapolate([(20, 40.0)], 40)[0] == pytest.approx(160.0)


def test_flops_and_features(bench):
    assert bench.method_flops("glccl", 10, 10, K=12, Nw=32, D=512) < bench.method_flops("glccl_naive", 10, 10, K=12,
                                                                                         Nw=32, D=512)
    assert bench.method_flops("meanp", 4, 5, K=12, Nw=32, D=8) == 2 * 4 * 5 * 8 + 2 * 5 * 12 * 8  # cosine GEMM + frame means
    text, video, t2v = bench.structured_features(20, {"K": 4, "Nw": 8, "D": 16})
    assert text["words"].shape == (20, 8, 16) and video["frames"].shape == (20, 4, 16)
    assert bool(text["word_mask"][:, :8].all()) and t2v.tolist() == list(range(20))


# ---------------------------------------------------------------------------------------------------------------------
# benchmarks/compare_heads.py


@pytest.fixture(scope="module")
def heads_bench():
    import sys

    spec = importlib.util.spec_from_file_location("bench_compare_heads", ROOT / "benchmarks" / "compare_heads.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def test_compare_heads_smoke(heads_bench, tmp_path, monkeypatch, capsys):
    """Two heads, K = 4, a few videos, 2 tower steps + 2 steps per head on the frozen tower's features: JSON, table,
    BENCHMARKS section, PNG and MLflow run, sane values; a second run reuses the cached tower and repeats the numbers."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    md = tmp_path / "BENCH.md"
    md.write_text("# Benchmarks\n\n## Other\n\nkeep me\n")
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--heads", "glccl,meanp", "--frames", "4", "--num-train", "8", "--num-test", "6", "--steps", "2",
            "--batch-size", "4", "--tower-frames", "4", "--tower-steps", "2", "--tower-batch-size", "4", "--events", "2-3", "--seconds", "1.5", "--fps", "8", "--cost-n", "8",
            "--cost-dim", "32", "--cost-words", "8", "--cost-reps", "1", "--cost-rate-s", "0.02", "--inprocess",
            "--threads", "1", "--data-root", str(tmp_path / "data"), "--out-dir", str(out), "--bench-md", str(md),
            "--tracking-uri", uri]
    assert heads_bench.main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "compare_heads.json").read_text())
    assert [(r["head"], r["K"]) for r in report["accuracy"]] == [("glccl", 4), ("meanp", 4)]
    tower = report["tower"]
    assert tower["steps"] == 2 and tower["cached"] is False and tower["settings"]["head"] == "meanp"
    assert tower["settings"]["K"] == 4 and tower["settings"]["batch_size"] == 4 and tower["settings"]["preset"] == "tiny-rn"
    assert Path(tower["path"]).is_file() and Path(tower["path"]).parent == tmp_path / "data" / "towers"
    for r in report["accuracy"]:
        t = r["test"]
        assert t["num_videos"] == 6 and t["num_texts"] == 6 and r["train"]["steps"] == 2
        for d in ("t2v", "v2t"):
            assert 0 <= t[f"{d}/R@1"] <= t[f"{d}/R@5"] <= 100 and 1 <= t[f"{d}/MnR"] <= 6
        assert math.isfinite(r["train"]["loss_last10"]) and r["train"]["train_s"] > 0
        # the frame tower is frozen: only text tower, temporal encoder, head and logit scale train
        assert 0 < r["train"]["trained_params"] < r["train"]["model_params"]
    data = report["data"]["4"]
    assert data["train_videos"] == 8 and data["events"] == [2, 3] and data["frames_per_video"] == 12
    cost = {r["head"]: r for r in report["cost"]}
    assert set(cost) == {"glccl", "meanp"}
    for r in cost.values():
        assert r["K"] == 4 and r["n"] == 8 and r["wall_s"] > 0 and r["flops"] > 0 and r["peak_bytes"] >= 0
    assert cost["glccl"]["flops"] > cost["meanp"]["flops"]
    assert cost["glccl"]["head_params"] > 0 and cost["meanp"]["head_params"] == 0
    assert report["conclusions"] and any("GLCCL vs MeanP" in s for s in report["conclusions"])
    # table: printed, in the .md file, and as a section of BENCH.md that keeps the rest of the file
    for text in (printed, (out / "compare_heads.md").read_text(), md.read_text()):
        assert heads_bench.SECTION in text and "| 4 | glccl |" in text and "| 4 | meanp |" in text
    bench = md.read_text()
    assert bench.startswith("# Benchmarks\n\n## Other\n\nkeep me\n") and bench.count(heads_bench.SECTION) == 1
    assert "![accuracy vs cost, cost vs K](out/compare_heads.png)" in bench
    assert (out / "compare_heads.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one finished MLflow run with the numbers, the training curves and the three files
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("glccl-bench").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_id == report["mlflow"]["run_id"]
    m = runs[0].data.metrics
    assert m["glccl/K4/test/t2v/R1"] == report["accuracy"][0]["test"]["t2v/R@1"]
    assert m["meanp/K4/cost/gflop"] == pytest.approx(cost["meanp"]["flops"] / 1e9)
    assert runs[0].data.params["arg.heads"] == "glccl,meanp"
    assert [x.step for x in client.get_metric_history(runs[0].info.run_id, "meanp/K4/train/loss")] == [1, 2]
    assert [x.step for x in client.get_metric_history(runs[0].info.run_id, "tower/K4/train/loss")] == [1, 2]
    assert m["tower/K4/train/steps"] == 2
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} == {
        "compare_heads.json", "compare_heads.md", "compare_heads.png"}
    # again, accuracy only: the tower comes from the cache, and the same seed and batches give the same numbers
    out2 = tmp_path / "out2"
    assert heads_bench.main(args[:args.index("--out-dir")] + ["--skip-cost", "--no-mlflow", "--bench-md", "",
                                                               "--out-dir", str(out2)]) == 0
    again = json.loads((out2 / "compare_heads.json").read_text())
    assert again["tower"]["cached"] is True and again["tower"]["path"] == tower["path"]
    for r1, r2 in zip(report["accuracy"], again["accuracy"]):
        assert r2["test"] == pytest.approx(r1["test"]) and r2["train"]["final_loss"] == pytest.approx(
            r1["train"]["final_loss"], rel=1e-4)


def test_compare_heads_cost_worker_subprocess(heads_bench):
    r = heads_bench.measure_cost("xpool", 4, n=8, Nw=8, D=16, reps=1, rate_s=0.02, threads=1)
    assert r["head"] == "xpool" and r["K"] == 4 and r["timed"] == 8 and r["wall_s"] > 0
    assert r["flops"] == heads_bench.simbench.method_flops("xpool", 8, 8, K=4, Nw=8, D=16)
    assert r["head_params"] > 0 and 0 <= r["peak_bytes"] < 2e9


def test_compare_heads_helpers(heads_bench):
    hb = heads_bench
    # default video schedule: more events and longer videos as K grows, always more frames than K
    assert [hb.video_spec(K)["events"] for K in (12, 32, 64)] == [(2, 4), (4, 6), (7, 11)]
    assert hb.video_spec(12)["seconds"] == 5.0
    assert all(hb.video_spec(K)["frames_per_video"] >= K for K in (4, 12, 32, 64, 100))
    assert hb.video_spec(64, events=(6, 10), seconds=8.0)["frames_per_video"] == 80
    # the section is replaced in place (the rest kept), or appended
    text = "# B\n\n## A\n\na\n\n" + hb.SECTION + "\n\nold\n\n## C\n\nc\n"
    new = hb.replace_section(text, hb.SECTION + "\n\nnew\n")
    assert new == "# B\n\n## A\n\na\n\n" + hb.SECTION + "\n\nnew\n\n## C\n\nc\n"
    assert hb.replace_section(new, hb.SECTION + "\n\nnew\n") == new
    assert hb.replace_section("# B\n", hb.SECTION + "\n\nx\n") == "# B\n\n" + hb.SECTION + "\n\nx\n"
    # batches: no video twice in a batch, each pass one caption per video, passes see different captions
    import numpy as np
    import torch

    caps = [np.arange(3 * v, 3 * v + 3) for v in range(10)]
    split = hb.Split(video_ids=[str(v) for v in range(10)], frames=torch.zeros(10, 2, 4, 4, 3, dtype=torch.uint8),
                     frame_mask=torch.ones(10, 2, dtype=torch.bool), captions=[["c"] * 3] * 10,
                     tokens=torch.zeros(30, 8, dtype=torch.long), caption_video=torch.arange(10).repeat_interleave(3),
                     video_captions=caps)
    recipe = hb.Recipe(batch_size=5, captions_per_video=2)
    batches = hb.epoch_batches(split, recipe, np.random.default_rng(0))
    assert len(batches) == 4 == hb.steps_per_epoch(10, recipe)
    seen: dict[int, set] = {}
    for vids, cs in batches:
        assert len(set(vids.tolist())) == 5 and all(c // 3 == v for v, c in zip(vids, cs))
        for v, c in zip(vids.tolist(), cs.tolist()):
            seen.setdefault(v, set()).add(c)
    assert all(len(s) == 2 for s in seen.values())
    assert len(list(hb.batch_stream(split, hb.Recipe(batch_size=5, steps=7), 7))) == 7


def test_compare_heads_cached_frames_step_matches_pixels(heads_bench):
    """The stage-3 step on cached frame features gives the same losses as the library step on the pixels."""
    import torch

    from glccl import engine
    from glccl.losses import build_loss
    from glccl.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny-rn", head="glscl", num_frames=3, max_words=8).eval()  # glscl: has aux_losses
    frames = torch.randint(0, 256, (2, 3, model.image_size, model.image_size, 3), dtype=torch.uint8)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    tokens = model.tokenize(["a red circle", "a blue square moves"])
    loss_fn = build_loss(model.head)
    with torch.no_grad():
        want = engine.compute_losses(model, loss_fn, {"tokens": tokens, "frames": frames, "frame_mask": mask})
        feats = model.encode_frames(engine.channels_first(frames), mask)
        got = engine.compute_losses(heads_bench.CachedFrames(model), loss_fn,
                                    {"tokens": tokens, "frames": feats, "frame_mask": mask})
    assert set(got) == set(want) and any(k.startswith("aux/") for k in got)
    for k in want:
        assert float(got[k]) == pytest.approx(float(want[k]), rel=1e-5, abs=1e-6), k


def test_ddp_step_benchmark_runs_both_modes():
    """benchmarks/ddp_step.py: two real gloo ranks, both scoring modes timed, a finite speed-up printed."""
    import re
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddp_step.py"), "--quick", "--preset", "tiny",
                          "--batch", "8", "--frames", "4", "--words", "8"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| own texts") or
            line.startswith("| whole global")]
    assert len(rows) == 2, out.stdout
    # pairs scored per rank: 4 x 8 (own texts) and 8 x 8 (whole matrix)
    assert rows[0].split("|")[2].strip() == "32" and rows[1].split("|")[2].strip() == "64"
    for row in rows:
        assert float(row.split("|")[3]) > 0
    speedup = re.search(r"speed-up of row blocks: ([0-9.]+)x", out.stdout)
    assert speedup and math.isfinite(float(speedup.group(1))) and float(speedup.group(1)) > 0
