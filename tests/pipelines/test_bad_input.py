"""Ordinary mistakes get one clear line (exit 2) before any work starts, and nothing is half-written.

The CLI cases run ``glccl`` in process; a spy on ``ray_session.connect`` proves that Ray was never started and the
absent ``mlflow.db`` that no MLflow run was made. The streaming and prepare cases run on a real local Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from glccl.config import ConfigError, load_config, read_yaml, to_dict
from glccl.data.manifest import build_manifest, build_manifests, check_splits, read_manifest, select_split
from glccl.data.report import AnnotationError, SkipReport, SplitError
from glccl.model import create_model_from_config
from pipelines import ray_session
from pipelines.cli import main as glccl
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.preset=tiny", "model.num_frames=4", "model.max_words=16", "model.temporal_layers=1",
        "train.batch_size=8", "train.eval_batch_size=8", "train.epochs=1", "scaling.num_workers=1",
        "experiment=test-bad-input", "data.dataset=synth"]


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if anything starts or joins Ray."""
    def refuse(*a, **k):
        raise AssertionError("Ray was started before the input was checked")

    monkeypatch.setattr(ray_session, "connect", refuse)


@pytest.fixture
def synth_copy(tiny_synth, tmp_path):
    root = tmp_path / "synth"
    shutil.copytree(tiny_synth, root)
    return root


def _one_line(capsys, rc, *words):
    """rc 2 and a single stderr line holding every word, no traceback."""
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert rc == 2, (rc, cap.err[-2000:])
    assert len(lines) == 1 and "Traceback" not in cap.err, cap.err[-2000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _train(storage, root, *extra):
    return glccl(["train", f"storage={storage}", f"data.root={root}", "name=bad", *TINY, *extra])


# --- paths, splits, batch, weights: checked before Ray -------------------------------------------------------------

def test_data_root_that_is_a_file(no_ray, tmp_path, capsys):
    f = tmp_path / "root.txt"
    f.write_text("x")
    rc = _train(tmp_path / "runs", f)
    _one_line(capsys, rc, "glccl train:", "data.root", "is a file, not a folder")
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_storage_that_is_a_file(no_ray, tiny_synth, tmp_path, capsys):
    f = tmp_path / "runs"
    f.write_text("x")
    _one_line(capsys, _train(f, tiny_synth), "'storage'", "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_storage_not_writable(no_ray, tiny_synth, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _one_line(capsys, _train(ro, tiny_synth), "'storage'", "not writable")
    finally:
        ro.chmod(0o700)


def test_split_name_typo(no_ray, tiny_synth, tmp_path, capsys):
    rc = _train(tmp_path / "runs", tiny_synth, "data.test_split=tset")
    _one_line(capsys, rc, "data.test_split", "'tset'")
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_head_typo(no_ray, tiny_synth, tmp_path, capsys):
    _one_line(capsys, _train(tmp_path / "runs", tiny_synth, "model.head=glcl"), "model.head", "glcl")


def test_batch_larger_than_training_split(no_ray, tiny_synth, tmp_path, capsys):
    rc = _train(tmp_path / "runs", tiny_synth, "train.batch_size=100000")
    _one_line(capsys, rc, "train.batch_size", "100000", "no step would run")


def test_pretrained_that_is_a_folder(no_ray, tiny_synth, tmp_path, capsys):
    d = tmp_path / "weights.pt"
    d.mkdir()
    _one_line(capsys, _train(tmp_path / "runs", tiny_synth, f"model.pretrained={d}"), "model.pretrained",
              "is a folder, not a file")


def test_frame_cache_of_another_size(no_ray, synth_copy, tmp_path, capsys):
    from pipelines.data import CACHE_FORMAT

    split = synth_copy / "frames" / "train"
    split.mkdir(parents=True)
    (split / "meta.json").write_text(json.dumps({"format": CACHE_FORMAT, "size": 17, "num_frames": 4}))
    rc = _train(tmp_path / "runs", synth_copy, f"data.cache={synth_copy / 'frames'}")
    _one_line(capsys, rc, "data.cache", "17 px")


def test_same_name_with_another_head_is_refused(no_ray, tiny_synth, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from glccl.config import flatten
    from pipelines import tracking

    storage = tmp_path / "runs"
    cfg = load_config(None, [f"storage={storage}", f"data.root={tiny_synth}", "name=bad", *TINY])
    uri = tracking.default_tracking_uri(storage)
    run_id, _ = tracking.start_or_resume_run(uri, cfg.experiment, cfg.name, flatten(to_dict(cfg)))
    client = MlflowClient(tracking_uri=uri)
    client.set_terminated(run_id)
    exp = client.get_experiment_by_name(cfg.experiment).experiment_id
    capsys.readouterr()  # MLflow's lines of creating the store
    rc = _train(storage, tiny_synth, "model.head=xpool")
    _one_line(capsys, rc, "'name'", "model.head was glccl, now xpool")
    assert len(client.search_runs([exp])) == 1  # no second run of that name


# --- configs and annotation files -----------------------------------------------------------------------------------

def test_yaml_section_written_twice(no_ray, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 3\nmodel:\n  head: glccl\ntrain:\n  lr: 0.1\n")
    rc = glccl(["train", "--config", str(cfg)])
    _one_line(capsys, rc, "key 'train' is given twice (lines 1 and 5)")


def test_yaml_with_byte_order_mark(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes("\ufefftrain:\n  epochs: 3\n".encode("utf-8"))
    assert read_yaml(cfg) == {"train": {"epochs": 3}}
    assert load_config(cfg).train.epochs == 3


def test_config_path_that_is_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a file"):
        read_yaml(tmp_path)


def _msvd(root: Path, captions_text: str, lists: dict[str, list[str]]) -> Path:
    (root / "videos").mkdir(parents=True)
    (root / "captions_msvd.json").write_text(captions_text)
    for split, ids in lists.items():
        (root / f"{split}_list.txt").write_text("".join(i + "\n" for i in ids))
    return root


def test_json_duplicate_key_names_the_line(tmp_path):
    text = '{\n "a": ["one"],\n "b": ["two"],\n "a": ["three"]\n}\n'
    root = _msvd(tmp_path, text, {"test": ["a", "b"]})
    with pytest.raises(AnnotationError, match=r"key 'a' is given twice") as e:
        build_manifest("msvd", root, "test")
    assert ":2" in str(e.value) or "line 2" in str(e.value)


def test_json_with_byte_order_mark(tmp_path):
    root = tmp_path / "m"
    _msvd(root, "", {"test": ["a"]})
    (root / "captions_msvd.json").write_bytes("\ufeff".encode() + b'{"a": ["a caption"]}')
    assert build_manifest("msvd", root, "test")["caption"].to_pylist() == ["a caption"]


def test_id_listed_twice_is_a_counted_skip(tmp_path):
    root = _msvd(tmp_path, json.dumps({"a": ["x", "y"], "b": ["z"]}), {"test": ["a", "b", "a"]})
    report = SkipReport(stage="manifest")
    t = build_manifest("msvd", root, "test", report=report)
    assert sorted(t["caption"].to_pylist()) == ["x", "y", "z"]  # a's captions once
    assert report.by_reason() == {"duplicate_id": 1}


def test_split_overlap_and_empty_split(tmp_path):
    caps = {v: [f"caption of {v}"] for v in "abcd"}
    root = _msvd(tmp_path, json.dumps(caps), {"train": ["a", "b", "c"], "test": ["c", "d"], "val": []})
    t = build_manifests("msvd", root, ["train", "test"])
    with pytest.raises(SplitError, match=r"1 video\(s\) are in both split 'train' and split 'test' \(e.g. c\)"):
        check_splits(t, ["train", "test"], disjoint=[("train", "test")])
    check_splits(t, ["train", "test"])  # allowed when not asked to be disjoint (data.allow_split_overlap)
    with pytest.raises(SplitError, match="split 'val' is empty"):
        check_splits(t, ["train", "val"])


def test_overlap_refused_by_train_and_allowed_by_the_key(no_ray, synth_copy, tmp_path, capsys):
    (synth_copy / "test_list.txt").write_text("train00000\n" + (synth_copy / "test_list.txt").read_text())
    rc = _train(tmp_path / "runs", synth_copy)
    _one_line(capsys, rc, "'train' and split 'test'", "train00000", "data.allow_split_overlap")
    from pipelines import preflight

    cfg = load_config(None, [f"storage={tmp_path / 'runs'}", f"data.root={synth_copy}", "name=ok", *TINY,
                             "data.allow_split_overlap=true"])
    manifest = preflight.check_run(cfg, tmp_path / "runs")
    test = select_split(read_manifest(manifest), "test")
    assert "train00000" in test["video_id"].to_pylist()


def test_manifest_command_refuses_overlap_unless_allowed(no_ray, tmp_path, capsys):
    caps = {v: [f"caption of {v}"] for v in "abcd"}
    root = _msvd(tmp_path / "m", json.dumps(caps), {"train": ["a", "b", "c"], "val": ["d"], "test": ["c", "d"]})
    out = tmp_path / "m.parquet"
    argv = ["data", "manifest", "--dataset", "msvd", "--root", str(root), "--out", str(out), "--quiet"]
    _one_line(capsys, glccl(argv), "split 'train' and split 'test'", "(e.g. c)")
    assert not out.exists()
    assert glccl(argv + ["--allow-split-overlap"]) == 0
    assert read_manifest(out).num_rows == 6


def test_upper_case_extension_is_found(synth_copy):
    v = synth_copy / "videos"
    (v / "test00001.mp4").rename(v / "test00001.MP4")
    report = SkipReport(stage="manifest")
    t = build_manifest("synth", synth_copy, "test", report=report, check_videos=True)
    paths = dict(zip(t["video_id"].to_pylist(), t["video_path"].to_pylist()))
    assert paths["test00001"].endswith("test00001.MP4") and report.num_skipped == 0


# --- data commands ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["data", "synth", "--num-train", "0", "--out", "unused"],
    ["data", "synth", "--seconds", "-1", "--out", "unused"],
    ["data", "prepare", "--dataset", "synth", "--root", "unused", "--num-frames", "0"],
    ["data", "prepare", "--dataset", "synth", "--root", "unused", "--size", "-3"],
])
def test_counts_must_be_positive(no_ray, argv, capsys):
    with pytest.raises(SystemExit) as e:
        glccl(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert ("must be >= 1" in err or "must be > 0" in err) and "Traceback" not in err


def test_prepare_refuses_to_mix_settings(no_ray, tiny_synth, tmp_path, capsys):
    from pipelines.data import CACHE_FORMAT

    out = tmp_path / "cache"
    (out / "val").mkdir(parents=True)
    (out / "val" / "meta.json").write_text(json.dumps({"format": CACHE_FORMAT, "num_frames": 8, "size": 32,
                                                      "cache_factor": 3}))
    rc = glccl(["data", "prepare", "--dataset", "synth", "--root", str(tiny_synth), "--split", "test", "--out",
                str(out), "--num-frames", "4", "--size", "32", "--quiet"])
    _one_line(capsys, rc, "split 'val' was prepared with other settings", "num_frames 8 there, 4 here")
    assert sorted(p.name for p in out.iterdir()) == ["val"]


# --- checkpoints and queries -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_config(None, [*TINY, "data.root=unused"])
    model = create_model_from_config(cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "best_model.pt"
    torch.save({"model": model.state_dict(), "config": to_dict(cfg)}, path)
    return path


def test_checkpoint_problems_are_one_line(no_ray, checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    for path, words in ((empty, ["is empty (0 bytes)"]), (cut, ["truncated, or not a torch.save file"]),
                        (folder, ["is a directory"]), (tmp_path / "none.pt", ["does not exist"])):
        _one_line(capsys, glccl(["eval", "--checkpoint", str(path)]), str(path), *words)
    rc = glccl(["eval", "--checkpoint", str(checkpoint), "model.head=xpool"])
    _one_line(capsys, rc, "holds a glccl model on tiny", "model.head 'glccl' -> 'xpool'", "drop them")


def test_empty_query(checkpoint):
    from glccl.search import Gallery, QueryError, search
    from pipelines.checkpoints import load_model_checkpoint

    model, _ = load_model_checkpoint(checkpoint)
    g = Gallery(torch.randn(3, 4, model.embed_dim), torch.ones(3, 4, dtype=torch.bool), ["a", "b", "c"])
    with pytest.raises(QueryError, match="query 2 of 2 is empty"):
        search(model, g, ["a red circle", "   "], k=2)
    assert len(search(model, g, ["a red circle"], k=2)[0]) == 2


# --- on a real Ray: streams over the limit, prepares that fail ---------------------------------------------------------

def _break(root: Path, ids: list[str]) -> None:
    for vid in ids:
        (root / "videos" / f"{vid}.mp4").write_bytes(b"not a video at all")


@pytest.mark.ray
def test_stream_over_the_skip_limit_fails_the_run(ray_session, synth_copy, tmp_path):
    from mlflow.tracking import MlflowClient

    from glccl.data.report import BadInputError
    from pipelines import train

    _break(synth_copy, ["test00001", "test00004", "test00006"])
    cfg = load_config(None, [f"storage={tmp_path / 'runs'}", f"data.root={synth_copy}", "name=broken", *TINY,
                             "train.max_steps=1", "scaling.max_failures=0"])
    with pytest.raises(BadInputError, match=r"split 'test': 3 of 8 videos were skipped .*data.max_skip_fraction"):
        train.run(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("test-bad-input").experiment_id])
    assert run.info.status == "FAILED"
    assert client.get_metric_history(run.info.run_id, "data/skipped/test")[-1].value == 3
    paths = {a.path for a in client.list_artifacts(run.info.run_id, "data")}
    assert "data/skipped_test.json" in paths


@pytest.mark.ray
def test_failed_prepare_leaves_the_cache_as_it_was(ray_session, synth_copy, tmp_path):
    from pipelines.data import prepare_cache

    table = build_manifests("synth", synth_copy, ["val", "test"])
    out = tmp_path / "cache"
    first = prepare_cache(table, ["val", "test"], out, num_frames=4, size=32, progress=False)
    assert first["installed"]
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    _break(synth_copy, ["test00002", "test00003"])
    again = prepare_cache(table, ["val", "test"], out, num_frames=4, size=32, progress=False)
    assert again["exceeded"] and not again["installed"]
    after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and "rejected" not in p.name}
    assert after == before  # both splits untouched, the good val split included
    rep = json.loads((out / "test.rejected.skipped.json").read_text())
    assert rep["skipped"] == 2


# --- signals -----------------------------------------------------------------------------------------------------------

def test_ui_stopped_by_sigterm_stops_its_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", "--port", str(port), "--storage",
                             str(tmp_path / "runs")], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    server = None
    try:
        line = proc.stdout.readline()  # "MLflow UI: ... pid N ..." once the server is healthy
        assert "MLflow UI:" in line, line + proc.stdout.read()
        server = int(line.split("pid ")[1].split(";")[0])
        os.killpg(server, 0)  # alive
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                os.killpg(server, 0)  # the server's process group: the server and its uvicorn worker
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"MLflow server group {server} still running after glccl ui got SIGTERM")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if server is not None:
            try:
                os.killpg(server, signal.SIGKILL)  # only if the test failed with it running
            except ProcessLookupError:
                pass


@pytest.mark.ray
def test_train_stopped_by_sigterm_leaves_nothing_running(tiny_synth, tmp_path):
    import psutil

    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONUNBUFFERED": "1"}  # a private Ray
    cmd = [sys.executable, "-m", "pipelines.cli", "train", f"storage={tmp_path / 'runs'}", f"data.root={tiny_synth}",
           "name=stopped", *TINY, "train.epochs=50"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    started: list[psutil.Process] = []
    try:
        deadline = time.time() + 240
        seen = ""
        while time.time() < deadline:  # the MLflow run is made once Ray is up and the data prepared
            line = proc.stdout.readline()
            seen += line
            if "MLflow run" in line or not line:
                break
        assert "MLflow run" in seen, seen[-3000:]
        time.sleep(3)  # the trainer's workers start
        started = psutil.Process(proc.pid).children(recursive=True)
        assert started, "no Ray processes under glccl train"
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[0]
        assert proc.returncode == 130, rest[-3000:]
        assert "glccl train: interrupted" in rest
        _, alive = psutil.wait_procs(started, timeout=30)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [" ".join(p.cmdline()[:3]) for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in started:  # only if the test failed with them running
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
