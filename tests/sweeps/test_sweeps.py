"""Ray Tune sweeps: sweep-file validation, a 2-trial sweep with its MLflow parent and children, and a sweep whose driver
is killed and then resumed to completion without duplicate runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from glccl.config import ConfigError
from sweeps.tune import load_sweep
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path, body: dict, name="sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return path


GOOD = {"name": "s", "base": str(ROOT / "configs" / "demo.yaml"),
        "space": {"loss.eta": {"type": "uniform", "low": 0.1, "high": 0.9}}}


def test_demo_sweep_file_is_valid():
    sweep = load_sweep(ROOT / "sweeps" / "demo.yaml")
    assert set(sweep.space) == {"loss.eta", "model.num_frames", "train.lr"}
    assert sweep.run_config({"loss.eta": 0.3}).loss.eta == 0.3


@pytest.mark.parametrize("change, needle", [
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"space": {}}, "'space' is empty"),
    ({"space": {"loss.etta": {"type": "uniform", "low": 0, "high": 1}}}, "space key 'loss.etta' is not a config key"),
    ({"space": {"loss.eta": {"type": "gaussian"}}}, "space key 'loss.eta' needs a mapping with type"),
    ({"space": {"loss.eta": {"type": "uniform", "low": 1, "high": 0}}}, "space key 'loss.eta' needs low < high"),
    ({"space": {"train.lr": {"type": "loguniform", "low": 0, "high": 1}}}, "needs low > 0"),
    ({"space": {"model.num_frames": {"type": "choice", "values": []}}}, "empty list of values"),
    ({"space": {"model.num_frames": {"type": "choice", "values": [8, "many"]}}}, "'model.num_frames'"),
    ({"mode": "best"}, "'mode' must be max or min"),
    ({"overrides": ["train.epochs=0"]}, "train.epochs"),
])
def test_bad_sweep_files_are_rejected_with_the_key(tmp_path, change, needle):
    with pytest.raises(ConfigError) as e:
        load_sweep(_write(tmp_path, {**GOOD, **change}))
    assert needle in str(e.value)


def test_missing_space_is_rejected(tmp_path):
    body = dict(GOOD)
    del body["space"]
    with pytest.raises(ConfigError, match="missing key 'space'"):
        load_sweep(_write(tmp_path, body))


def _sweep_file(tmp_path, root, name, samples, storage=None, cache=None, scheduler=None) -> Path:
    body = {
        "name": name,
        "base": str(ROOT / "configs" / "demo.yaml"),
        "overrides": [f"storage={storage or tmp_path / 'runs'}", f"data.root={root}", f"data.cache={cache or 'null'}",
                      "experiment=test-sweeps",
                      "model.num_frames=4", "model.max_words=16", "model.temporal_layers=1", "train.epochs=2",
                      "train.batch_size=8", "train.eval_batch_size=8", "scaling.num_workers=1",
                      "train.checkpoint_every_steps=2"],
        "space": {"loss.eta": {"type": "uniform", "low": 0.1, "high": 0.9},
                  "train.lr": {"type": "loguniform", "low": 3e-4, "high": 3e-3}},
        "metric": "val/t2v/R@1", "mode": "max", "samples": samples, "scheduler": scheduler or {"type": "fifo"},
        "max_concurrent": 1,
    }
    return _write(tmp_path, body, f"{name}.yaml")


def _runs(storage: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("test-sweeps")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("glccl.sweep_parent") == "1"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.fixture(scope="module")
def two_trial_sweep(ray_session, tiny_synth, tmp_path_factory):
    """A real 2-trial sweep on the session's local Ray; returns (its output, its storage folder).

    Storage and data root are given relative to the driver's working directory, as `storage: runs` in the shipped
    configs: every trial (which Tune starts in its own trial directory) must still log into that one store.
    """
    from sweeps.tune import run_sweep

    tmp_path = tmp_path_factory.mktemp("sweep2")
    sweep = load_sweep(_sweep_file(tmp_path, os.path.relpath(tiny_synth, tmp_path), "two", samples=2, storage="runs"))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        out = run_sweep(sweep)
    finally:
        os.chdir(cwd)
    return out, tmp_path / "runs"


@pytest.mark.ray
def test_two_trial_sweep_records_parent_and_children(two_trial_sweep):
    out, storage = two_trial_sweep
    assert out["trials"] == 2 and out["best_config"] is not None
    client, parents, children = _runs(storage)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert "loss.eta" in child.data.params and "train.lr" in child.data.params
        assert "val/t2v/R1" in child.data.metrics and "test/t2v/R1" in child.data.metrics
    etas = {float(c.data.params["loss.eta"]) for c in children}
    assert len(etas) == 2, "both trials ran the same sampled config"
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/best.yaml", "sweep/sweep.yaml"} <= arts


def _page_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.mark.ray
def test_glccl_ui_lists_the_sweep_runs_in_a_real_browser(two_trial_sweep, chromium):
    """`glccl ui` over the sweep's store, its runs page rendered by headless Chromium: the parent and both trials."""
    _, storage = two_trial_sweep
    client, parents, children = _runs(storage)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    ui = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", "--storage", str(storage), "--port", str(port)],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = ui.stdout.readline()
            assert line or ui.poll() is None, "glccl ui exited:\n" + "".join(lines)
            lines.append(line)
            if "test-sweeps:" in line:
                break
        url = next((ln.split(": ", 1)[1].strip() for ln in lines if "test-sweeps:" in ln), None)
        assert url and url.startswith(f"http://127.0.0.1:{port}/#/experiments/"), "".join(lines)
        page = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--virtual-time-budget=30000", "--dump-dom", url],
                              capture_output=True, text=True, timeout=180)
        text = _page_text(page.stdout)
        assert parents[0].info.run_name in text, text[:2000]
        # children are nested under the parent row; the table counts them
        assert f"{1 + len(children)} matching runs" in text, text[:2000]
    finally:
        ui.send_signal(signal.SIGINT)  # glccl ui stops its MLflow server (by PID) on Ctrl-C
        try:
            ui.wait(30)
        except subprocess.TimeoutExpired:
            ui.kill()
            ui.wait(5)
    assert ui.returncode == 0


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=20)


@pytest.mark.ray
@pytest.mark.slow  # 5+ minutes on 2 cores: runs in `make test-all`
def test_interrupted_sweep_resumes_to_completion(tiny_synth, tmp_path):
    """Kill the sweep's driver (and the private Ray it started) mid-trial, then `glccl sweep --resume` finishes it."""
    path = _sweep_file(tmp_path, tiny_synth, "interrupted", samples=2)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "first.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.tune", "--config", str(path)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    storage = tmp_path / "runs"
    try:
        deadline = time.time() + 400
        ckpts: list[Path] = []
        while time.time() < deadline and proc.poll() is None:  # wait for the first trial's first checkpoint
            ckpts = list((storage / "ray").glob("interrupted-*/checkpoint_*"))
            if ckpts:
                break
            time.sleep(2)
        assert ckpts, f"no checkpoint before the kill; driver log:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
        time.sleep(3)
    finally:
        _kill_tree(proc.pid)
    _, parents, children = _runs(storage)
    assert len(parents) == 1 and parents[0].info.status == "RUNNING"  # the killed driver could not end it
    done = subprocess.run([sys.executable, "-m", "sweeps.tune", "--resume", "interrupted", "--storage", str(storage)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, parents2, children2 = _runs(storage)
    assert [p.info.run_id for p in parents2] == [parents[0].info.run_id] and parents2[0].info.status == "FINISHED"
    assert len(children2) == 2, [c.info.run_name for c in children2]  # no duplicate runs for the resumed trial
    assert all(c.info.status == "FINISHED" for c in children2)
    assert {c.info.run_id for c in children} <= {c.info.run_id for c in children2}


@pytest.mark.ray
@pytest.mark.slow
def test_trials_stopped_by_the_scheduler_end_cleanly_and_the_next_trial_runs(tiny_synth, tmp_path):
    """ASHA stops every trial at max_t = 1 of 2 epochs, ending its process mid-run; `glccl sweep` on its own local Ray,
    reading a frame cache, as the demo sweep does.

    Regression: the stopped trial's Ray Train placement group stayed reserved (Train's cleaner needs the state API, so
    the local Ray runs its dashboard), and the next trial's data tasks waited forever for that CPU. Its MLflow run
    stayed RUNNING (its process never reached its `finally`).
    """
    path = _sweep_file(tmp_path, tiny_synth, "stopped", samples=2, cache=tmp_path / "cache",
                       scheduler={"type": "asha", "max_t": 1, "grace_period": 1})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    with open(tmp_path / "sweep.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sweeps.tune", "--config", str(path)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=420)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            _kill_tree(proc.pid)
    out = (tmp_path / "sweep.log").read_text(errors="replace")
    assert rc == 0, f"sweep did not finish (rc {rc}); log tail:\n{out[-3000:]}"
    _, parents, children = _runs(tmp_path / "runs")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    for c in children:
        assert c.info.status == "FINISHED", (c.info.run_name, c.info.status)
        assert c.data.tags.get("glccl.stopped_early") == "1", c.info.run_name
        assert "val/t2v/R1" in c.data.metrics, sorted(c.data.metrics)  # its epoch-1 validation was recorded
