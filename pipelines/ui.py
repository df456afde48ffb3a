"""``glccl ui``: an MLflow server on 127.0.0.1 over the project's tracking store; ``glccl runs``: top runs as a table.

    glccl ui                      # serves runs/mlflow.db at http://127.0.0.1:5000 until Ctrl-C
    glccl ui --port 5123 --storage runs
    glccl runs --experiment glccl-demo --metric test/t2v/R1 --top 10
    glccl runs --sweep NAME       # the children of a sweep's parent run
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipelines import tracking


def start_server(storage: str | Path, host: str = "127.0.0.1", port: int = 5000,
                 backend_uri: str | None = None, log_path: str | Path | None = None) -> subprocess.Popen:
    """Start a lean ``mlflow server`` (one worker, job execution off) and wait for /health. Caller stops it by PID."""
    storage = Path(storage).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    uri = backend_uri or f"sqlite:///{storage / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--default-artifact-root", str(storage / "mlartifacts"), "--host", host, "--port", str(port), "--workers", "1"]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode} (port {port} taken?)")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"mlflow server on {host}:{port} did not become healthy in 90 s")


def stop_server(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop the server we started: SIGTERM to its process group, SIGKILL after a grace period."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def experiment_urls(uri: str, base: str) -> list[tuple[str, str]]:
    """``(experiment name, URL of its runs table)`` for every experiment with runs in the store.

    MLflow 3 opens experiments on its GenAI overview; ``workflowType=machine_learning`` opens the runs table (sweep
    children nested under their parent run) that training runs are compared in.
    """
    client = MlflowClient(tracking_uri=uri)
    out = []
    for exp in client.search_experiments():
        if client.search_runs([exp.experiment_id], max_results=1):
            out.append((exp.name, f"{base}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"))
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="glccl ui", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", default="runs", help="the project's runs/ folder (holds mlflow.db)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    backend = os.environ.get("MLFLOW_TRACKING_URI")
    if backend and backend.startswith("http"):
        print(f"MLFLOW_TRACKING_URI points at a server already: {backend}")
        return 0
    proc = start_server(args.storage, args.host, args.port, backend_uri=backend)
    try:  # Ctrl-C, SIGTERM or SIGHUP at any point from here stops the server
        uri = backend or tracking.default_tracking_uri(args.storage)
        base = f"http://{args.host}:{args.port}"
        print(f"MLflow UI: {base}  (store: {uri}; pid {proc.pid}; Ctrl-C to stop)", flush=True)
        for name, url in experiment_urls(uri, base):
            print(f"  {name}: {url}", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(proc)
    return 0


def top_runs(uri: str, experiment: str | None, metric: str, top: int, parent_run_id: str | None = None,
             ascending: bool = False) -> list[dict]:
    client = MlflowClient(tracking_uri=uri)
    if experiment:
        exps = [client.get_experiment_by_name(experiment)]
        if exps[0] is None:
            raise SystemExit(f"glccl runs: no experiment named {experiment!r} in {uri}")
    else:
        exps = client.search_experiments()
    filt = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id else ""
    key = tracking.metric_key(metric)
    runs = client.search_runs([e.experiment_id for e in exps], filter_string=filt, max_results=1000)
    rows = []
    for r in runs:
        m = r.data.metrics
        rows.append({"run": r.info.run_name or r.info.run_id[:8], "status": r.info.status, "id": r.info.run_id,
                     "head": r.data.params.get("model.head", ""), metric: m.get(key, float("nan")),
                     "t2v/R5": m.get("test/t2v/R5", float("nan")), "v2t/R1": m.get("test/v2t/R1", float("nan")),
                     "dataset": _dataset(r), "commit": _commit(r)})
    rows.sort(key=lambda x: (x[metric] != x[metric], x[metric] if ascending else -x[metric]))
    return rows[:top]


def _dataset(run) -> str:
    """The run's dataset input as ``name@digest`` (first 8 digest characters), or ""."""
    inputs = getattr(run, "inputs", None)
    sets = [d.dataset for d in (inputs.dataset_inputs if inputs else [])]
    return f"{sets[0].name}@{sets[0].digest[:8]}" if sets else ""


def _commit(run) -> str:
    tags = run.data.tags
    commit = tags.get("mlflow.source.git.commit") or tags.get("git.commit", "")
    commit = "" if commit == "unknown" else commit[:10]
    return commit + ("+dirty" if commit and tags.get("git.dirty") == "true" else "")


def runs_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="glccl runs", description="Print the top runs of an experiment or a sweep.")
    p.add_argument("--experiment", default=None)
    p.add_argument("--sweep", default=None, help="sweep name: list the children of its parent run")
    p.add_argument("--metric", default="test/t2v/R1")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--ascending", action="store_true")
    p.add_argument("--storage", default="runs")
    args = p.parse_args(argv)
    uri = tracking.default_tracking_uri(args.storage)
    parent = None
    if args.sweep:
        found = MlflowClient(tracking_uri=uri).search_runs(
            [e.experiment_id for e in MlflowClient(tracking_uri=uri).search_experiments()],
            filter_string=f"tags.`{tracking.RUN_NAME_TAG}` = '{args.sweep}'", max_results=1)
        if not found:
            print(f"glccl runs: no sweep named {args.sweep!r} in {uri}", file=sys.stderr)
            return 2
        parent = found[0].info.run_id
    rows = top_runs(uri, args.experiment, args.metric, args.top, parent, args.ascending)
    if not rows:
        print("no runs")
        return 0
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    print("  ".join(f"{c:<{widths[c]}}" for c in cols))
    for r in rows:
        print("  ".join(f"{_fmt(r[c]):<{widths[c]}}" for c in cols))
    return 0


def _fmt(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)
