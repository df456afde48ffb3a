"""A tiny length study through the platform: DiDeMo-style data at two lengths, feature caches of one frozen tower, a
grid sweep (2 heads x 2 lengths x 2 seeds) with `glccl sweep`, and `glccl report` with its tables, intervals and plots
logged to the sweep's parent run."""

from __future__ import annotations

import os

import pytest
import torch
import yaml

pytestmark = [pytest.mark.ray]

LENGTHS = {"K4": {"K": 4, "events": (2, 3), "seconds": 4.0}, "K8": {"K": 8, "events": (4, 5), "seconds": 8.0}}
NW = 24


@pytest.fixture(scope="module")
def tiny_study(ray_session, tmp_path_factory):
    from glccl.data.manifest import build_manifests, write_manifest
    from glccl.data.synth import generate
    from glccl.model import create_model
    from pipelines import data as pdata
    from sweeps.tune import load_sweep, run_sweep

    work = tmp_path_factory.mktemp("study")
    torch.manual_seed(11)
    tower = create_model("tiny-rn-32", head="meanp", num_frames=4, max_words=NW).eval()
    torch.save(tower.state_dict(), work / "tower.pt")
    bundles = []
    for label, spec in LENGTHS.items():
        root = work / label
        generate(root, num_train=16, num_val=4, num_test=8, seed=5, size=32, fps=4, seconds=spec["seconds"],
                 workers=1, events=spec["events"], layout="didemo", described=(2, 2))
        table = build_manifests("didemo", root, ["train", "val", "test"])
        write_manifest(table, root / "manifest.parquet")
        pdata.prepare_cache(table, ["train", "val", "test"], root / "frames", num_frames=spec["K"], size=32,
                            cache_factor=1, progress=False)
        pdata.prepare_features(root / "frames", ["train", "val", "test"], root / "features", tower)
        bundles.append({"label": label, "data.root": str(root), "data.cache": str(root / "features"),
                        "model.pretrained": str(work / "tower.pt"), "model.num_frames": spec["K"]})
    base = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "length_study.yaml")))
    base.update(storage=str(work / "runs"), experiment="test-length-study")
    base["model"].update(max_words=NW)
    base["train"].update(epochs=1, max_steps=2, batch_size=8, eval_batch_size=8)
    (work / "base.yaml").write_text(yaml.safe_dump(base))
    sweep_file = work / "study.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "tiny-study", "base": "base.yaml", "search": "grid", "samples": 1, "scheduler": {"type": "fifo"},
        "metric": "val/t2v/R@1", "mode": "max", "max_concurrent": 2,  # two trials at once on the 4 logical CPUs
        "space": {"length": {"type": "grid", "values": bundles},
                  "model.head": {"type": "grid", "values": ["glccl", "meanp"]},
                  "train.seed": {"type": "grid", "values": [0, 1]}}}))
    out = run_sweep(load_sweep(sweep_file))
    return work, out


def test_every_trial_is_a_child_of_one_parent(tiny_study):
    from mlflow.tracking import MlflowClient

    work, out = tiny_study
    from pipelines import tracking

    client = MlflowClient(tracking_uri=tracking.default_tracking_uri(work / "runs"))
    exp = client.get_experiment_by_name("test-length-study")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    cells = {(r.data.tags["sweep.length"], r.data.params["model.head"], r.data.params["train.seed"]) for r in children}
    assert cells == {(length, h, s) for length in LENGTHS for h in ("glccl", "meanp") for s in ("0", "1")}
    assert {r.data.params["loss.recipe"] for r in children if r.data.params["model.head"] == "meanp"} == {"infonce"}


def test_report_tables_intervals_and_plots(tiny_study, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from pipelines import report as rep
    from pipelines import tracking

    work, _ = tiny_study
    assert rep.main(["--sweep", "tiny-study", "--storage", str(work / "runs"), "--out", str(tmp_path),
                     "--boot", "200", "--cost-n", "32", "--cost-budget", "0.5"]) == 0
    printed = capsys.readouterr().out
    for label in LENGTHS:
        assert f"### {label}" in printed
    assert "glccl" in printed and "meanp" in printed and "Within noise of the best" in printed
    import json

    data = json.loads((tmp_path / "report.json").read_text())
    for label in LENGTHS:
        g = data["analysis"][label]
        assert g["queries"] == 8 and g["seeds"] == [0, 1]
        for head in ("glccl", "meanp"):
            cell = g["heads"][head]["t2v/R@1"]
            assert cell["ci"][0] <= cell["mean"] <= cell["ci"][1] and len(cell["per_seed"]) == 2
            assert data["cost"][label][head]["flops"] > 0 and data["cost"][label][head]["seconds"] > 0
        d = g["paired"]["glccl"]["meanp"]["t2v/R@1"]
        assert d["ci"][0] <= d["ci"][1] and isinstance(d["within_noise"], bool)
    assert data["cost"]["K8"]["glccl"]["flops"] > data["cost"]["K4"]["glccl"]["flops"]
    for png in ("accuracy_vs_length.png", "accuracy_vs_cost.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(tracking_uri=tracking.default_tracking_uri(work / "runs"))
    parent = [r for r in client.search_runs([client.get_experiment_by_name("test-length-study").experiment_id])
              if "mlflow.parentRunId" not in r.data.tags][0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/accuracy_vs_length.png", "report/accuracy_vs_cost.png"} <= logged


def test_bootstrap_helpers_on_known_ranks():
    import numpy as np

    from pipelines.report import bootstrap, metric_from_ranks

    ranks = {0: np.array([0, 0, 5, 9]), 1: np.array([0, 1, 1, 0])}
    assert float(metric_from_ranks(ranks[0], "t2v/R@1")) == 50.0
    assert float(metric_from_ranks(ranks[1], "t2v/MnR")) == 1.5
    vals = bootstrap(ranks, "t2v/R@1", 500, np.random.default_rng(0))
    assert 0.0 <= vals.min() <= 62.5 <= vals.max() <= 100.0  # the point estimate (50 + 75) / 2 lies inside
    same = bootstrap({0: ranks[0]}, "t2v/R@1", 50, np.random.default_rng(0), seeds=np.zeros((50, 1), int),
                     queries=np.tile(np.arange(4), (50, 1)))
    assert np.all(same == 50.0)  # no resampling: the plain metric


def test_report_on_an_unknown_sweep_is_one_line(tmp_path, capsys):
    from pipelines import report as rep

    assert rep.main(["--sweep", "no-such-sweep", "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow store" in err[0]
    from pipelines import tracking

    tracking.ensure_experiment(tracking.default_tracking_uri(tmp_path / "runs"), "other")  # a store, not this sweep
    capsys.readouterr()
    assert rep.main(["--sweep", "no-such-sweep", "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no sweep named 'no-such-sweep'" in err[0]


def test_the_shipped_study_sweep_is_valid_and_bundles_are_checked(tmp_path):
    from pathlib import Path

    from glccl.config import ConfigError
    from sweeps.tune import load_sweep

    repo = Path(__file__).resolve().parents[2]
    sweep = load_sweep(repo / "sweeps" / "length_study.yaml")
    lengths = sweep.space["length"]["values"]
    assert [b["label"] for b in lengths] == ["K12", "K32", "K64"]
    heads = {b["label"]: b for b in sweep.space["model.head"]["values"]}
    assert list(heads) == ["glccl", "xpool", "xclip", "tcmgc", "glscl", "meanp"]
    # the raw-product pooling heads run with the temperature scaled to the tower's feature scale, the rest at defaults
    assert {h for h, b in heads.items() if "model.head_args" in b} == {"glccl", "glscl"}
    glccl = sweep.run_config({"length": lengths[0], "model.head": heads["glccl"], "train.seed": 0})
    assert (glccl.model.head, glccl.model.head_args) == ("glccl", {"temperature": 50.0})
    assert len(sweep.space["train.seed"]["values"]) >= 3
    cfg = sweep.run_config({"length": lengths[2], "model.head": heads["tcmgc"], "train.seed": 1})
    assert (cfg.model.num_frames, cfg.model.max_words, cfg.model.head, cfg.train.seed) == (64, 64, "tcmgc", 1)
    assert cfg.data.cache == "data/length-study/K64/features" and cfg.data.dataset == "didemo"
    bad = yaml.safe_load((repo / "sweeps" / "length_study.yaml").read_text())
    bad["base"] = str(repo / "configs" / "length_study.yaml")
    bad["space"]["length"]["values"][0]["model.num_frame"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"bundle 'K12'.*model\.num_frame"):
        load_sweep(tmp_path / "bad.yaml")
    del bad["space"]["length"]["values"][0]["model.num_frame"]
    del bad["space"]["length"]["values"][1]["label"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="needs a 'label'"):
        load_sweep(tmp_path / "bad.yaml")
