"""A real local multi-node Ray cluster (head + worker node + MLflow server, all separate processes) and real Ray jobs:
a training job logged to the cluster's MLflow server, a bad config failing with its error in ``ray job logs``, a sweep
job stopped with ``ray job stop``, and a worker node killed mid-training with the run recovering from its checkpoint.

One cluster for the module; every process it starts is ended by PID in the fixture's finaliser (errors included).
The cluster runs with token authentication; clients use its token (``LocalCluster.submit_env``), and clients without
it are refused. Every socket its processes listen on is audited (``cluster.exposure``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
EXPERIMENT = "test-cluster"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 logical CPU) + one worker node (2) + MLflow server: a 2-worker TorchTrainer needs the worker node."""
    import atexit

    from cluster.local import LocalCluster, find_base_port

    c = LocalCluster(tmp_path_factory.mktemp("cluster"), workers=1, cpus_per_node=2, head_cpus=1,
                     base_port=find_base_port(47000), object_store_mb=512)
    atexit.register(c.down)  # belt and braces: the finaliser below is the normal path
    try:
        c.up(timeout_s=180)
        yield c
    finally:
        c.down(grace_s=5)


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("jobruns")


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def _overrides(root, storage, name, **train) -> list[str]:
    ov = [f"name={name}", f"storage={storage}", f"experiment={EXPERIMENT}", "data.dataset=synth", f"data.root={root}",
          "model.preset=tiny", "model.num_frames=4", "model.max_words=16", "model.temporal_layers=1",
          "train.batch_size=8", "train.eval_batch_size=8", "train.epochs=1", "scaling.num_workers=2"]
    return ov + [f"train.{k}={v}" for k, v in train.items()]


def _steps(root, epochs: int) -> int:
    from glccl.data.manifest import build_manifest

    return epochs * (build_manifest("synth", root, "train").num_rows // 8)


def _ray_job(cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``ray job ARGS --address <dashboard>`` as a client would run it (with the cluster's token)."""
    cmd = [RAY, "job", args[0], "--address", cluster.dashboard_url, *args[1:]]
    return subprocess.run(cmd, cwd=REPO, env=cluster.submit_env(), capture_output=True, text=True, timeout=timeout)


def _glccl_submit(cluster, entrypoint: list[str]) -> str:
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "submit", "--cluster-dir", str(cluster.dir), "--",
                          *entrypoint], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    m = re.search(r"^JOB_ID=(\S+)$", out.stdout, re.M)
    assert m, out.stdout
    return m.group(1)


def _api(cluster, path: str, token: str | None = "cluster", data: dict | None = None):
    """A job-server API call; ``token="cluster"`` sends the cluster's token, None none, anything else that string."""
    token = cluster.token() if token == "cluster" else token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = None
    if data is not None:
        body, headers["Content-Type"] = json.dumps(data).encode(), "application/json"
    req = urllib.request.Request(f"{cluster.dashboard_url}{path}", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _job(cluster, job_id: str) -> dict:
    return _api(cluster, f"/api/jobs/{job_id}")


def _logs(cluster, job_id: str) -> str:
    return _api(cluster, f"/api/jobs/{job_id}/logs")["logs"]


def _wait(cluster, job_id: str, timeout: float, until=("SUCCEEDED", "FAILED", "STOPPED")) -> str:
    deadline = time.time() + timeout
    status = None
    while time.time() < deadline:
        status = _job(cluster, job_id)["status"]
        if status in until:
            return status
        time.sleep(1.0)
    tail = _logs(cluster, job_id)[-3000:]
    pytest.fail(f"job {job_id} still {status} after {timeout:.0f} s; log tail:\n{tail}")


def _mlflow_run(cluster, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cluster.mlflow_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return client, None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`glccl.run_name` = '{name}'")
    return client, (runs[0] if runs else None)


def _wait_registered_checkpoint(cluster, job_id: str, run_dir: Path, timeout: float) -> int:
    """Step of the first checkpoint that Ray Train has *registered* (its checkpoint manager snapshot names it), not
    merely written: a checkpoint whose report the controller has not collected yet is not restored after a failure."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert _job(cluster, job_id)["status"] in ("PENDING", "RUNNING"), _logs(cluster, job_id)[-3000:]
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):  # not there yet, or being rewritten
            latest = {}
        if latest.get("checkpoint_dir_name") and (run_dir / latest["checkpoint_dir_name"]).is_dir():
            return int(latest["metrics"]["step"])
        time.sleep(0.3)
    pytest.fail(f"no registered checkpoint under {run_dir} after {timeout:.0f} s")


def _final_json(logs: str) -> dict:
    """The JSON of test metrics that ``pipelines.train`` prints last."""
    start = logs.rfind("\n{")
    assert start >= 0, logs[-2000:]
    return json.loads(logs[start + 1: logs.index("}", start) + 1])


# ---------------------------------------------------------------------------------------------------------------------
# tests


def test_cluster_status(cluster):
    st = cluster.status()
    alive = [n for n in st["ray_nodes"] if n["state"] == "ALIVE"]
    assert len(alive) == 2 and sum(n["resources"].get("CPU", 0) for n in alive) == 3
    assert all(p["alive"] for p in st["processes"])
    assert [p for p in st["processes"] if p["name"] == "mlflow"][0]["healthy"]
    out = subprocess.run([sys.executable, "-m", "cluster.local", "status", "--dir", str(cluster.dir)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ray nodes: 2 alive" in out.stdout and cluster.mlflow_uri in out.stdout


def test_clients_without_the_token_are_refused(cluster, tmp_path):
    """The token file is private; every node runs in token mode; job submission over HTTP and with `ray job submit`,
    the GCS and the Ray client server refuse a stranger (no token, or a wrong one); the documented client flow
    (`eval "$(python -m cluster.local env)"`, then `ray job ...`) works."""
    import os
    import stat
    import urllib.error

    from cluster.exposure import _grpc_code
    from cluster.processes import node_ip, process_tree

    token = cluster.token()
    assert stat.S_IMODE(cluster.token_path.stat().st_mode) == 0o600 and re.fullmatch(r"[0-9a-f]{64}", token)
    assert token not in cluster.state_path.read_text()
    procs = process_tree([(n["pid"], n["create_time"]) for n in cluster.live_nodes()])
    raylets = [p for p in procs if p.name() in ("raylet", "gcs_server")]
    assert len(raylets) == 3  # the GCS and one raylet per node
    for p in raylets:
        env = p.environ()
        assert env.get("RAY_AUTH_MODE") == "token" and env.get("RAY_AUTH_TOKEN_PATH") == str(cluster.token_path)
        assert "RAY_AUTH_TOKEN" not in env

    marker = tmp_path / "ran"
    job = {"entrypoint": f"touch {marker}", "submission_id": "glccl-test-stranger"}
    for bad, code in ((None, 401), ("0" * 64, 403)):
        with pytest.raises(urllib.error.HTTPError) as e:
            _api(cluster, "/api/jobs/", token=bad, data=job)
        assert e.value.code == code
    stranger = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    stranger["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    out = subprocess.run([RAY, "job", "submit", "--address", cluster.dashboard_url, "--", "touch", str(marker)],
                         cwd=tmp_path, env=stranger, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "authentication" in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    ip, ports = node_ip(), cluster.state["ports"]
    assert _grpc_code(ip, ports["gcs"], "/ray.rpc.NodeInfoGcsService/GetClusterId", None) == "UNAUTHENTICATED"
    assert _grpc_code(ip, ports["gcs"], "/ray.rpc.NodeInfoGcsService/GetClusterId", token) == "OK"
    assert _grpc_code(ip, ports["ray_client_server"], "/ray.rpc.RayletDriver/KVExists", None) == "UNAUTHENTICATED"
    assert _grpc_code(ip, ports["gcs"], "/ray.rpc.NodeInfoGcsService/GetClusterId", "f" * 64) == "UNAUTHENTICATED"
    assert not marker.exists()
    assert "glccl-test-stranger" not in {j.get("submission_id") for j in cluster.jobs()}

    flow = (f'eval "$({sys.executable} -m cluster.local env --dir {cluster.dir})" && {RAY} job list && '
            f'{RAY} job submit --submission-id glccl-test-flow -- python -c "print(6 * 7)"')
    out = subprocess.run(["bash", "-c", flow], cwd=REPO, env=stranger, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert _wait(cluster, "glccl-test-flow", 120) == "SUCCEEDED" and "42" in _logs(cluster, "glccl-test-flow")


@pytest.mark.timeout(300)
def test_every_listening_socket_is_loopback_or_token_protected(cluster):
    """With a job driver and its actor running: every socket the cluster's processes listen on is bound to 127.0.0.1,
    or refuses a request without the token, or is one of the head's two read-only metrics exporters."""
    from cluster.exposure import cluster_audit, format_report

    code = ("import ray, time; ray.init(); A = ray.remote(type('A', (), {'ping': lambda self: 1})); a = A.remote(); "
            "ray.get(a.ping.remote()); print('READY', flush=True); time.sleep(300)")
    sub = _ray_job(cluster, "submit", "--submission-id", "glccl-test-audit", "--no-wait", "--", "python", "-c", code)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    try:
        deadline = time.time() + 120
        while not re.search(r"^READY$", _logs(cluster, "glccl-test-audit"), re.M):  # not the echoed entrypoint
            assert time.time() < deadline and _job(cluster, "glccl-test-audit")["status"] in ("PENDING", "RUNNING"), \
                _logs(cluster, "glccl-test-audit")[-3000:]
            time.sleep(1)
        findings = cluster_audit(cluster)
        report = format_report(findings)
        assert not [f for f in findings if f.verdict == "OPEN"], report
        ports = cluster.state["ports"]
        by_port = {}
        for f in findings:
            by_port.setdefault(f.listener.port, set()).add(f.verdict)
        assert by_port[ports["dashboard"]] == {"loopback"} and by_port[ports["mlflow"]] == {"loopback"}, report
        assert "token" in by_port[ports["gcs"]] and "token" in by_port[ports["ray_client_server"]], report
        for n in cluster.live_nodes():
            assert by_port[n["ports"]["node_manager"]] == {"token"}, report
            assert by_port[n["ports"]["object_manager"]] == {"token"}, report
        assert {f.listener.port for f in findings if f.verdict == "metrics"} <= {ports["dashboard_metrics"],
                                                                               ports["autoscaler_metrics"]}, report
        assert any(f.listener.process == "ray::A" and f.verdict == "token" for f in findings), report  # the actor
        assert any(f.listener.process == "python -c" and f.verdict == "token" for f in findings), report  # driver
        cli = subprocess.run([sys.executable, "-m", "cluster.local", "audit", "--dir", str(cluster.dir)], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0 and ", OPEN 0" in cli.stdout, cli.stdout + cli.stderr
    finally:
        _ray_job(cluster, "stop", "glccl-test-audit")


@pytest.mark.timeout(600)
def test_train_job_logs_to_cluster_mlflow(cluster, tiny_synth, storage):
    """The documented `ray job submit ... --runtime-env cluster/runtime_env.yaml -- python -m pipelines.train`."""
    name = "clu-train"
    entry = ["python", "-m", "pipelines.train", "--config", "configs/demo.yaml", *_overrides(tiny_synth, storage, name)]
    sub = _ray_job(cluster, "submit", "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml",
                   "--submission-id", "glccl-test-train", "--no-wait", "--", *entry)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert _wait(cluster, "glccl-test-train", 540) == "SUCCEEDED", _logs(cluster, "glccl-test-train")[-4000:]

    status = _ray_job(cluster, "status", "glccl-test-train")
    assert status.returncode == 0 and "succeeded" in (status.stdout + status.stderr).lower()
    logs = _ray_job(cluster, "logs", "glccl-test-train").stdout
    m = re.search(r"\[glccl\] MLflow run (\w+) \(new\) in (\S+)", logs)
    assert m and m.group(2) == cluster.mlflow_uri, logs[-3000:]
    final = _final_json(logs)
    assert "test/t2v/R@1" in final

    client, run = _mlflow_run(cluster, name)
    assert run is not None and run.info.run_id == m.group(1)
    assert run.info.status == "FINISHED"
    assert run.data.params["scaling.num_workers"] == "2"
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert [p.step for p in loss] == list(range(1, _steps(tiny_synth, 1) + 1))
    assert run.data.metrics["test/t2v/R1"] == pytest.approx(final["test/t2v/R@1"])


@pytest.mark.timeout(300)
def test_bad_config_job_fails_with_config_error(cluster):
    job = _glccl_submit(cluster, ["python", "-m", "pipelines.train", "--config", "configs/demo.yaml",
                                  "train.batch_size=7"])
    assert _wait(cluster, job, 240) == "FAILED"
    logs = _ray_job(cluster, "logs", job)
    assert logs.returncode == 0
    assert "config key 'train.batch_size'" in logs.stdout and "not divisible" in logs.stdout, logs.stdout[-2000:]
    status = _ray_job(cluster, "status", job)
    assert "failed" in (status.stdout + status.stderr).lower()


@pytest.mark.timeout(400)
def test_sweep_job_logs_to_cluster_mlflow_and_stops(cluster, tiny_synth, storage):
    """A sweep submitted as a job creates its parent run on the cluster's MLflow server; `ray job stop` ends it."""
    name = "clu-sweep"
    base = [f"base.{o}" for o in _overrides(tiny_synth, storage, "unused") if not o.startswith(("name=", "train.num"))]
    sub = _ray_job(cluster, "submit", "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml",
                   "--submission-id", "glccl-test-sweep", "--no-wait", "--", "python", "-m", "sweeps.tune",
                   "--config", "sweeps/demo.yaml", f"name={name}", "samples=1", *base)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    deadline = time.time() + 300
    run, logs = None, ""
    # running for real: its parent run is on the cluster's MLflow server and Tune's experiment loop has started
    while run is None or "View detailed results here" not in logs:
        assert time.time() < deadline, f"sweep not running after 300 s; log tail:\n{logs[-3000:]}"
        logs = _logs(cluster, "glccl-test-sweep")
        assert _job(cluster, "glccl-test-sweep")["status"] in ("PENDING", "RUNNING"), logs[-3000:]
        _, run = _mlflow_run(cluster, name)
        time.sleep(2)
    assert run.data.tags.get("glccl.sweep_parent") == "1"
    assert _job(cluster, "glccl-test-sweep")["status"] == "RUNNING", _logs(cluster, "glccl-test-sweep")[-3000:]
    stop = _ray_job(cluster, "stop", "glccl-test-sweep")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert _wait(cluster, "glccl-test-sweep", 120) == "STOPPED", _logs(cluster, "glccl-test-sweep")[-3000:]
    status = _ray_job(cluster, "status", "glccl-test-sweep")
    assert "stopped" in (status.stdout + status.stderr).lower()


@pytest.mark.slow  # 3-6 minutes on 2 cores: runs in `make test-all`
@pytest.mark.timeout(900)
def test_worker_node_loss_recovers_from_checkpoint(cluster, tiny_synth, storage):
    """Kill the worker node (its whole process tree, SIGKILL) after a checkpoint; a replacement node joins; the run
    restarts from the checkpoint and finishes with every step in its MLflow loss history."""
    name = "clu-failover"
    epochs = 2
    job = _glccl_submit(cluster, ["python", "-m", "pipelines.train", "--config", "configs/demo.yaml",
                                  *_overrides(tiny_synth, storage, name, epochs=epochs, checkpoint_every_steps=2),
                                  "scaling.max_failures=2"])
    registered = _wait_registered_checkpoint(cluster, job, Path(storage) / "ray" / name, timeout=480)

    ended = cluster.kill_node("worker-1")
    assert ended >= 3  # ray start, raylet, agents and at least one training worker
    assert not [n for n in cluster.live_nodes() if n["name"] == "worker-1"]
    cluster.add_worker()  # the replacement node
    assert _wait(cluster, job, 600) == "SUCCEEDED", _logs(cluster, job)[-5000:]

    logs = _logs(cluster, job)
    m = re.search(r"\[glccl\] resumed from checkpoint: step (\d+)", logs)
    assert m, logs[-5000:]
    assert int(m.group(1)) >= registered
    final = _final_json(logs)
    assert "test/t2v/R@1" in final
    client, run = _mlflow_run(cluster, name)
    assert run is not None and run.info.status == "FINISHED"
    total = _steps(tiny_synth, epochs)
    steps = [p.step for p in client.get_metric_history(run.info.run_id, "train/loss")]
    assert max(steps) == total and set(steps) == set(range(1, total + 1))
