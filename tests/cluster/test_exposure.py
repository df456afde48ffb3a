"""Exposure audit of what the project starts on this machine: a training run (the demo's private local Ray, Ray Train
workers included), the private Ray of ``glccl data prepare``, and ``glccl ui``. Every socket they listen on must be
bound to 127.0.0.1 (``cluster.exposure``); the local cluster is audited in ``tests/cluster/test_cluster.py``. The audit itself
is shown to fail on a socket that anyone on the network can use.

Every process started here is stopped by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    """The caller's environment without another Ray's address or token (a stray RAY_AUTH_MODE=disabled stays in: the
    private Ray must ignore it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN",
                                                            "RAY_AUTH_TOKEN_PATH")}
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def _stop(proc: subprocess.Popen) -> None:
    from cluster.processes import kill_tree

    kill_tree([(proc.pid, None)], grace_s=10)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def _sample(proc: subprocess.Popen, on_sample, timeout: float, every: float = 0.5):
    """Audit the process tree of ``proc`` repeatedly until it exits (or ``on_sample(findings)`` returns True);
    returns every finding seen (deduplicated by process and address) and the number of samples taken."""
    from cluster.exposure import audit
    from cluster.processes import process_tree

    seen: dict[tuple, object] = {}
    samples = 0
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        now = audit(process_tree([(proc.pid, None)]))
        for f in now:
            seen.setdefault((f.listener.process, f.listener.proto, f.listener.host, f.listener.port), f)
        samples += 1
        if on_sample(now):
            break
        time.sleep(every)
    return list(seen.values()), samples


def test_audit_flags_a_socket_anyone_can_use(tmp_path):
    """The check can fail: a plain HTTP server bound to all interfaces is OPEN; one on 127.0.0.1 is loopback."""
    from cluster.exposure import audit, format_report
    from cluster.processes import process_tree
    from glccl.distributed import free_port

    empty = tmp_path / "empty"
    empty.mkdir()
    wide, local = free_port(), free_port()
    code = ("import http.server, socketserver, threading, functools, sys\n"
            f"h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={str(empty)!r})\n"
            f"a = socketserver.TCPServer(('0.0.0.0', {wide}), h)\n"
            f"b = socketserver.TCPServer(('127.0.0.1', {local}), h)\n"
            "threading.Thread(target=b.serve_forever, daemon=True).start()\n"
            "print('READY', flush=True)\n"
            "a.serve_forever()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        findings = audit(process_tree([(proc.pid, None)]))
        report = format_report(findings)
        verdicts = {f.listener.port: f.verdict for f in findings}
        assert verdicts == {wide: "OPEN", local: "loopback"}, report
        assert "FAIL: 1 socket(s)" in report
        out = subprocess.run([sys.executable, "-m", "pipelines.cli", "exposure", "--pid", str(proc.pid)], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and "OPEN" in out.stdout, out.stdout + out.stderr
    finally:
        _stop(proc)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_training_run_listens_on_loopback_only(tiny_synth, tmp_path):
    """`glccl train` (2 Ray Train workers on its private local Ray, as in the demo) opens sockets on 127.0.0.1 only,
    even with RAY_AUTH_MODE=disabled in its environment, and its GCS refuses a request without its token."""
    from cluster.exposure import _grpc_code

    overrides = ["name=exposure", f"storage={tmp_path}", "experiment=test-exposure", "data.dataset=synth",
                 f"data.root={tiny_synth}", "model.preset=tiny", "model.num_frames=4", "model.max_words=16",
                 "model.temporal_layers=1", "train.batch_size=8", "train.eval_batch_size=8", "train.epochs=1",
                 "scaling.num_workers=2", "train.max_steps=2"]
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.train", *overrides], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    refused: list[str] = []

    def probe_gcs(now) -> bool:  # once the GCS listens, ask it something without a token (from this machine)
        gcs = [f for f in now if f.listener.process == "gcs_server"]
        if gcs and not refused:
            refused.append(_grpc_code("127.0.0.1", gcs[0].listener.port, "/ray.rpc.NodeInfoGcsService/GetClusterId",
                                      None))
        return False

    try:
        findings, samples = _sample(proc, probe_gcs, timeout=400)
        assert proc.wait(60) == 0, "the training run failed"
    finally:
        _stop(proc)
    names = {f.listener.process for f in findings}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::RayTrainWorker") for n in names), names
    assert samples >= 5
    wide = [f for f in findings if f.verdict != "loopback"]
    assert not wide, [(f.listener.process, f.listener.address, f.verdict) for f in wide]
    assert refused == ["UNAUTHENTICATED"]


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_the_data_cli_ray_listens_on_loopback_only():
    """The private Ray of `glccl data prepare` (pipelines.ray_session.connect), with a task and an actor running."""
    from cluster.exposure import audit
    from cluster.processes import process_tree

    code = ("import time, ray\n"
            "from pipelines.ray_session import connect\n"
            "connect(None, num_cpus=1, object_store_mb=128, log_to_driver=False)\n"
            "A = ray.remote(type('A', (), {'ping': lambda self: 1}))\n"
            "a = A.remote()\n"
            "ray.get([a.ping.remote(), ray.remote(lambda: 1).remote()])\n"
            "print('READY', flush=True)\n"
            "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        findings = audit(process_tree([(proc.pid, None)]))
    finally:
        _stop(proc)
    names = {f.listener.process for f in findings}
    assert {"gcs_server", "raylet", "ray::A"} <= names, names
    assert all(f.verdict == "loopback" for f in findings), [(f.listener.process, f.listener.address) for f in findings]


@pytest.mark.timeout(180)
def test_glccl_ui_listens_on_loopback_only(tmp_path):
    from cluster.exposure import audit
    from cluster.processes import process_tree
    from glccl.distributed import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", "--storage", str(tmp_path), "--port",
                             str(port)], cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"MLflow UI: http://127.0.0.1:{port}"), line
        findings = audit(process_tree([(proc.pid, None)]))
        proc.send_signal(signal.SIGINT)  # glccl ui stops its server on Ctrl-C
        proc.wait(30)
    finally:
        _stop(proc)
    assert port in {f.listener.port for f in findings}
    assert all(f.verdict == "loopback" for f in findings), [(f.listener.process, f.listener.address) for f in findings]
