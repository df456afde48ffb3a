"""Ray Train end to end on a real local Ray, with a real MLflow (sqlite) store: the record of a run, recovery from a
killed worker process, and resuming a stopped run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest

from tests.faults import FailAt

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray]



def _expected_steps(root) -> int:
    from glccl.data.manifest import build_manifest

    return 2 * (build_manifest("synth", root, "train").num_rows // 8)  # 2 epochs of global batch 8


def _cfg(root, storage, name, *extra, **train):
    from glccl.config import load_config

    overrides = [f"name={name}", f"storage={storage}", "experiment=test-train", "data.dataset=synth",
                 f"data.root={root}", "model.preset=tiny", "model.num_frames=4", "model.max_words=16",
                 "model.temporal_layers=1", "train.batch_size=8", "train.eval_batch_size=8", "train.epochs=2",
                 "scaling.num_workers=2", "train.lr=1e-3", "train.coef_lr=1.0",
                 "train.checkpoint_every_steps=2"]
    overrides += [f"train.{k}={v}" for k, v in train.items()] + list(extra)
    return load_config(None, overrides)


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def baseline(ray_session, tiny_synth, tmp_path_factory):
    from pipelines import train

    storage = tmp_path_factory.mktemp("runs")
    cfg = _cfg(tiny_synth, storage, "baseline", "train.register_model=glccl-test-best")
    return cfg, train.run(cfg)


def test_run_leaves_complete_mlflow_record(baseline):
    cfg, out = baseline
    m = out["metrics"]
    for key in ("t2v/R@1", "t2v/R@5", "t2v/R@10", "t2v/MdR", "t2v/MnR", "v2t/R@1", "v2t/MnR"):
        assert f"test/{key}" in m, key
    total = _expected_steps(cfg.data.root)
    assert m["step"] == total and m["test/num_videos"] == 8
    client = _client(out["tracking_uri"])
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    from pathlib import Path

    assert run.info.artifact_uri.startswith(Path(cfg.storage).resolve().as_uri()), run.info.artifact_uri
    params = run.data.params
    assert params["model.head"] == "glccl" and params["train.batch_size"] == "8" and params["loss.eta"] == "0.5"
    assert params["loss.recipe"] == "infonce + 0.5*csc" and params["loss.terms"] == "infonce,csc"
    assert client.get_metric_history(out["run_id"], "train/csc")
    tags = run.data.tags
    for key in ("git.commit", "host", "version.torch", "version.ray", "version.mlflow"):
        assert tags.get(key), key
    assert "ray.job_id" in tags
    loss = client.get_metric_history(out["run_id"], "train/loss")
    assert [p.step for p in loss] == list(range(1, total + 1))
    assert client.get_metric_history(out["run_id"], "train/lr/new_decay")
    assert len(client.get_metric_history(out["run_id"], "val/t2v/R1")) == 2  # every epoch
    for key in ("test/t2v/R1", "test/v2t/R5", "test/t2v/MnR"):
        assert client.get_metric_history(out["run_id"], key), key
    paths = set()
    for top in client.list_artifacts(out["run_id"]):
        paths |= {a.path for a in client.list_artifacts(out["run_id"], top.path)} if top.is_dir else {top.path}
    for want in ("config/resolved.yaml", "metrics/test_metrics.json", "retrievals/test_top5.json",
                 "plots/test_recall_at_k.png"):
        assert want in paths, (want, paths)
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert any(lm.source_run_id == out["run_id"] for lm in models), "best model not logged"


def test_run_records_its_data_source_and_registered_model(baseline, capsys):
    import subprocess

    from glccl.data.manifest import read_manifest
    from pipelines.ui import runs_main

    cfg, out = baseline
    client = _client(out["tracking_uri"])
    run = client.get_run(out["run_id"])
    (inp,) = run.inputs.dataset_inputs  # the runs table's Dataset column
    ds = inp.dataset
    manifest = read_manifest(json.loads(ds.source)["uri"])
    assert ds.name.startswith("synth:") and len(ds.digest) == 16
    profile = json.loads(ds.profile)["splits"]
    for split in ("train", "val", "test"):
        rows = manifest.filter(pc.equal(manifest["split"], split))
        assert profile[split] == {"videos": len(set(rows["video_id"].to_pylist())), "captions": rows.num_rows,
                                  "skipped": 0}, split
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    tags = run.data.tags  # the Source column: entry point and commit
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head and tags["git.dirty"] in ("true", "false")
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"] and tags["glccl.command"]
    name, version = tags["glccl.registered_model"].split("/")
    mv = client.get_model_version(name, version)
    assert name == "glccl-test-best" and mv.run_id == out["run_id"]
    assert runs_main(["--storage", str(cfg.storage), "--experiment", "test-train"]) == 0
    table = capsys.readouterr().out
    assert "dataset" in table.splitlines()[0] and "commit" in table.splitlines()[0]
    assert f"{ds.name}@{ds.digest[:8]}" in table and head[:10] in table


def test_a_baseline_head_trains_with_its_own_loss(ray_session, tiny_synth, tmp_path):
    """X-CLIP's authors train with InfoNCE alone: the run's MLflow record says so, and no CSC metric is logged."""
    from pipelines import train

    cfg = _cfg(tiny_synth, tmp_path, "xclip-own-loss", "model.head=xclip", epochs=1, max_steps=2,
               checkpoint_every_steps=0)
    out = train.run(cfg)
    client = _client(out["tracking_uri"])
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.head"] == "xclip" and params["loss.recipe"] == "infonce" and params["loss.terms"] == "infonce"
    assert client.get_metric_history(out["run_id"], "train/nce")
    assert not client.get_metric_history(out["run_id"], "train/csc")


@pytest.mark.slow
def test_killed_worker_recovers_from_checkpoint(baseline, tiny_synth, tmp_path):
    from pipelines import train

    _, base = baseline
    cfg = _cfg(tiny_synth, tmp_path, "killed", "scaling.max_failures=3")
    marker = tmp_path / "killed.marker"
    out = train.run(cfg, step_callbacks=[FailAt("kill", at_step=3, rank=1, marker=marker)])
    assert marker.exists(), "the fault was never injected"
    m = out["metrics"]
    assert m["step"] == base["metrics"]["step"] == _expected_steps(tiny_synth)
    assert _client(out["tracking_uri"]).get_run(out["run_id"]).info.status == "FINISHED"
    # same data, same init, same number of steps: the recovered run ends close to the uninterrupted one
    for key in ("test/t2v/R@5", "test/t2v/MnR"):
        assert abs(m[key] - base["metrics"][key]) <= 40, (key, m[key], base["metrics"][key])


@pytest.mark.slow
def test_stopped_run_resumes_with_same_name(baseline, tiny_synth, tmp_path):
    from pipelines import train

    cfg = _cfg(tiny_synth, tmp_path, "stopped", "scaling.max_failures=0")
    marker = tmp_path / "stop.marker"
    from ray.train import TrainingFailedError

    with pytest.raises(TrainingFailedError, match="injected failure"):
        train.run(cfg, step_callbacks=[FailAt("raise", at_step=5, rank=0, marker=marker)])
    uri = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    client = _client(uri)
    runs = client.search_runs([client.get_experiment_by_name("test-train").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    # the same name: Ray Train restores the last checkpoint (step 4); retries allowed now (a loaded machine can fail a
    # worker health check, which must not fail the resume leg)
    import dataclasses

    cfg = dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, max_failures=2))
    out = train.run(cfg)
    assert out["run_id"] == runs[0].info.run_id, "resume created a new MLflow run"
    total = _expected_steps(tiny_synth)
    assert out["metrics"]["step"] == total
    steps = sorted(p.step for p in client.get_metric_history(out["run_id"], "train/loss"))
    # the failure hit before step 5 was logged; a restart from scratch would log steps 1-4 twice
    assert steps == list(range(1, total + 1)), steps
    assert client.get_run(out["run_id"]).info.status == "FINISHED"


def test_eval_cli_reproduces_test_metrics(baseline, tmp_path):
    """`glccl eval` on the run's best_model.pt scores the test split exactly as the run's final test did."""
    import json

    from pipelines import evaluate

    cfg, out = baseline
    ckpt = cfg.storage + f"/{cfg.name}/best_model.pt"
    dest = tmp_path / "metrics.json"
    assert evaluate.main(["--checkpoint", ckpt, "--json", str(dest)]) == 0
    got = json.loads(dest.read_text())
    for key in ("t2v/R@1", "t2v/R@5", "t2v/MnR", "v2t/R@1", "v2t/MnR"):
        assert got[key] == pytest.approx(out["metrics"][f"test/{key}"], abs=1e-4), key
    assert evaluate.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2


def test_logged_model_is_the_best_checkpoint_without_pickle(baseline):
    """The run's MLflow model (safetensors + JSON config) holds the same weights and config as its best_model.pt."""
    import torch

    from glccl.config import load_config
    from glccl.safe_load import load_tensors
    from pipelines.mlflow_model import load_model

    cfg, out = baseline
    uri = _client(out["tracking_uri"]).get_run(out["run_id"]).data.tags["glccl.best_model_uri"]
    model, logged_cfg = load_model(uri, tracking_uri=out["tracking_uri"])
    best = load_tensors(cfg.storage + f"/{cfg.name}/best_model.pt", "checkpoint")
    assert logged_cfg == load_config(best["config"])
    for key, value in best["model"].items():
        assert torch.equal(model.state_dict()[key], value), key
