"""MLflow tracking for runs: one run per training run, created by the driver, written to by rank 0, ended by the driver.

Default store: an absolute ``sqlite:`` URI under the project's ``runs/`` directory (MLflow 3.17 refuses a file store
and its default URI is relative); ``MLFLOW_TRACKING_URI`` overrides it (e.g. the cluster's MLflow server).
Resuming a run (same run name) continues the same MLflow run instead of creating a duplicate.
"""

from __future__ import annotations

import contextlib
import os
import platform
import hashlib
import json
import re
import shlex
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import ray
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.tracking import MlflowClient

RUN_NAME_TAG = "glccl.run_name"
RANKS_ARTIFACT = "ranks/test_ranks.json"
"""Every test query's 0-based rank of its correct item, per direction: what ``glccl report`` resamples."""
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-./ :]")


def default_tracking_uri(storage: str | os.PathLike) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    path = Path(storage).resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"  # sqlite:/// + /abs/path = four slashes


@contextlib.contextmanager
def fluent_uri(uri: str):
    """Point MLflow's fluent API at ``uri`` for a block. ``mlflow.set_tracking_uri`` also writes the process's
    ``MLFLOW_TRACKING_URI``; restore it afterwards so the next run in this process resolves its own store."""
    old = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old)  # None unsets the variable


def metric_key(key: str) -> str:
    """MLflow metric names allow letters, digits and ``_-./ :``; ``t2v/R@1`` becomes ``t2v/R1``."""
    return _BAD_KEY.sub("", key.replace("@", ""))


def _client(uri: str):
    return MlflowClient(tracking_uri=uri)


def artifact_location(uri: str, experiment: str) -> str | None:
    """For a sqlite store, artifacts live beside the database (MLflow's default is ``./mlruns`` of whatever directory
    the process happens to run in); a tracking server decides for itself."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts" / experiment).as_uri()
    return None


def ensure_experiment(uri: str, name: str) -> str:
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri, name))
    except Exception:  # created concurrently by another driver
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def git_dirty() -> str:
    """"true" when the checkout has uncommitted changes to tracked files, "false" when clean, "" outside git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).resolve().parent)
        return "" if out.returncode else ("true" if out.stdout.strip() else "false")
    except Exception:
        return ""


def entry_point() -> str:
    """The command that made the run, as a user would type it (``glccl train``), for MLflow's Source column."""
    argv = sys.argv or [""]
    path = Path(argv[0])
    if (path.name == "glccl" or path.parts[-2:] == ("pipelines", "cli.py")) and len(argv) > 1:
        return f"glccl {argv[1]}"
    if path.name == "__main__.py":  # python -m PACKAGE
        return path.parent.name
    return path.name or "python"


def source_tags() -> dict[str, str]:
    """What MLflow shows as a run's source: entry point, git commit, whether the tree was dirty, the command line."""
    commit = git_commit()
    return {"mlflow.source.name": entry_point(),
            "mlflow.source.type": "JOB" if os.environ.get("RAY_JOB_ID") else "LOCAL",
            "mlflow.source.git.commit": "" if commit == "unknown" else commit,
            "git.dirty": git_dirty(), "glccl.command": shlex.join(sys.argv)[:5000]}


def run_tags(extra: dict[str, str] | None = None) -> dict[str, str]:
    tags = {
        **source_tags(),
        "git.commit": git_commit(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "ray.job_id": os.environ.get("RAY_JOB_ID", "") or _ray_job_id(),
    }
    for pkg in ("torch", "open_clip_torch", "ray", "mlflow", "decord", "av", "glccl"):
        try:
            tags[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    tags.update(extra or {})
    return {k: v for k, v in tags.items() if v}


def _ray_job_id() -> str:
    if not ray.is_initialized():
        return ""
    try:
        return ray.get_runtime_context().get_job_id() or ""
    except Exception:  # noqa: BLE001  (a tag is not worth failing a run over)
        return ""


def start_or_resume_run(uri: str, experiment: str, run_name: str, params: dict[str, Any],
                        tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> tuple[str, bool]:
    """Return (run_id, resumed). A run of this name that did not finish is resumed (set back to RUNNING)."""
    client = _client(uri)
    exp_id = ensure_experiment(uri, experiment)
    found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found and found[0].info.status != "FINISHED":
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    all_tags = {RUN_NAME_TAG: run_name, "mlflow.runName": run_name, **run_tags(tags)}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, tags=all_tags, run_name=run_name)
    log_params(uri, run.info.run_id, params)
    return run.info.run_id, False


def latest_run(uri: str, experiment: str, run_name: str):
    """The newest MLflow run of this name (``mlflow.entities.Run``), or None; creates nothing."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def close_unfinished(uri: str, experiment: str, run_name: str, status: str = "KILLED") -> int:
    """End runs of this name left RUNNING by a killed driver, so that a fresh run does not continue them."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'")
    stale = [r for r in runs if r.info.status not in ("FINISHED", "FAILED", "KILLED")]
    for r in stale:
        client.set_terminated(r.info.run_id, status=status)
    return len(stale)


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    client = _client(uri)
    for i in range(0, len(items), 90):
        client.log_batch(run_id, params=items[i:i + 90])


STOPPED_EARLY_TAG = "glccl.stopped_early"
"""Set on the run of a sweep trial that Tune stopped before its last epoch (scheduler, max_t or time budget)."""


def stopped_early(uri: str, run_id: str) -> bool:
    return _client(uri).get_run(run_id).data.tags.get(STOPPED_EARLY_TAG) == "1"


def end_stopped_trial(uri: str, run_id: str) -> None:
    """End the run of a trial Tune stopped: FINISHED (Tune counts it TERMINATED, a normal end), tagged
    ``glccl.stopped_early``, without the error its process may have recorded while being torn down."""
    client = _client(uri)
    run = client.get_run(run_id)
    client.set_tag(run_id, STOPPED_EARLY_TAG, "1")
    if "glccl.error" in run.data.tags:
        client.delete_tag(run_id, "glccl.error")
    if run.info.status != "FINISHED":
        client.set_terminated(run_id, status="FINISHED")


def end_run(uri: str, run_id: str, status: str) -> None:
    _client(uri).set_terminated(run_id, status=status)


@contextlib.contextmanager
def run_status(uri: str, run_id: str):
    """End the run when the block ends: FINISHED when it returns, FAILED (tagged ``glccl.error``) when it raises.

    A sweep trial that Tune stops (ASHA, ``max_t``, the time budget) is a normal end: Tune raises ``SystemExit(0)`` at
    the trial's next report, or removes the trial's placement group, killing the Train controller, after the sweep
    driver has tagged the run ``glccl.stopped_early`` (:func:`settle_trial_run`). Either way the run ends FINISHED.
    """
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except SystemExit as e:
        if not e.code:
            status = "FINISHED"
            _client(uri).set_tag(run_id, STOPPED_EARLY_TAG, "1")
        raise
    except BaseException as e:
        if not stopped_early(uri, run_id):
            _client(uri).set_tag(run_id, "glccl.error", f"{type(e).__name__}: {e}"[:4000])
        raise
    finally:
        if status == "FAILED" and stopped_early(uri, run_id):
            status = "FINISHED"
        end_run(uri, run_id, status)


def runs_named(uri: str, experiment: str, name: str) -> list[tuple[str, str]]:
    """(run id, status) of every run of ``experiment`` named ``name``."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'")
    return [(r.info.run_id, r.info.status) for r in runs]


def settle_trial_run(uri: str, experiment: str, name: str, ok: bool) -> None:
    """Make a sweep trial's MLflow run agree with how Tune ended the trial.

    A trial stopped by Tune (ASHA cutting it, ``max_t``, the time budget) has its process ended mid-run: it may never
    reach its own ``finally`` (run left RUNNING), or reach it through the error of its Train controller being torn
    down (run ended FAILED). Tune counts such a trial TERMINATED, a normal end, so its run is ended FINISHED and tagged
    ``glccl.stopped_early``. A trial that errored is ended FAILED if it was left RUNNING.
    """
    for run_id, status in runs_named(uri, experiment, name):
        if ok and status != "FINISHED":
            end_stopped_trial(uri, run_id)
        elif not ok and status == "RUNNING":
            end_run(uri, run_id, "FAILED")


def file_digest(path: str | os.PathLike, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def log_dataset(uri: str, run_id: str, name: str, source: str, digest: str, profile: dict[str, Any],
                schema: dict[str, Any] | None = None, context: str = "training") -> None:
    """Record a run's data as an MLflow dataset input (the runs table's Dataset column)."""
    ds = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}),
                 schema=json.dumps(schema) if schema else None, profile=json.dumps(profile))
    _client(uri).log_inputs(run_id, datasets=[DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)])])


class RunLogger:
    """Metric/artifact writer for one run (used on rank 0 and by the driver). Each call is a write, except
    ``metrics(..., buffer=True)``: those are held and written ``flush_every`` steps at a time, or at ``flush()``
    (one SQLite write per step cost ~10 ms of a ~0.3 s demo step, on the critical path of every worker)."""

    def __init__(self, uri: str, run_id: str, flush_every: int = 20):
        self.uri, self.run_id = uri, run_id
        self.client = _client(uri)
        self.flush_every = flush_every
        self._pending: list = []
        self._pending_steps: set[int] = set()

    def metrics(self, values: dict[str, float], step: int, prefix: str = "", buffer: bool = False) -> None:
        ts = int(time.time() * 1000)
        items = [Metric(metric_key(prefix + k), float(v), ts, int(step)) for k, v in values.items()]
        if buffer:
            self._pending += items
            self._pending_steps.add(int(step))
            if len(self._pending_steps) >= self.flush_every:
                self.flush()
            return
        self._write(items)

    def flush(self) -> None:
        """Write the buffered metrics (call before a checkpoint, at the end of an epoch and at the end)."""
        items, self._pending, self._pending_steps = self._pending, [], set()
        self._write(items)

    def _write(self, items: list) -> None:
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def table(self, data: dict[str, list], artifact_file: str) -> None:
        self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def figure(self, fig, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, fig, artifact_file)

    def text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)
