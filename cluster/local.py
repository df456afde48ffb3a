"""A local multi-node Ray cluster on one machine: a head node, N worker nodes and an MLflow server that jobs log to.

    python -m cluster.local up --workers 1 --cpus-per-node 2            # head + 1 worker + MLflow server
    python -m cluster.local status                                      # nodes, resources, jobs, MLflow health
    python -m cluster.local env                                         # `export ...` lines for clients
    python -m cluster.local audit                                       # every listening socket and its protection
    python -m cluster.local add-worker                                  # one more worker node
    python -m cluster.local remove-worker worker-1 [--kill]             # stop (or SIGKILL) one worker node
    python -m cluster.local down                                        # stop exactly what `up` started

Every node is a ``ray start --block`` process started from this venv's ``ray`` in its own session, with its own
``--temp-dir`` (short, under /tmp), explicit ports taken from ``--base-port`` (never Ray's defaults, never the worker
port range 10002-19999) and a bounded ``--object-store-memory``. The state file ``<dir>/state.json`` records every PID
started (with its start time, so a reused PID is never touched), the ports and the addresses. ``down`` ends exactly
those process trees: the descendants of the recorded PIDs and the processes of the sessions they lead (Ray puts job
drivers in sessions of their own), SIGTERM first and SIGKILL after a grace period. It never runs ``ray stop``.

Token authentication: ``up`` writes a fresh random token to ``<dir>/auth_token`` (mode 0600) and every process of the
cluster runs with ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` pointing at it; every client needs the same two
variables (``ray job submit``/``logs``/``status``/``stop``, drivers, ``ray://`` clients, HTTP calls to the job server
with ``Authorization: Bearer <token>``). ``env`` prints the exports; ``glccl submit`` sets them itself.

What listens where: the job server (dashboard) and the MLflow server are bound to 127.0.0.1. Ray 2.60 cannot bind the
rest of a multi-node cluster to the loopback address (``ray start`` replaces 127.0.0.1 by the machine's network
address, and worker nodes cannot join a head that listens on 127.0.0.1 only), so the GCS, the raylets, the object
managers, the dashboard and runtime-env agents, the Ray client server and the worker processes listen on all
interfaces, and every one of them refuses a request without the token. Metrics collection is off
(``RAY_enable_metrics_collection=0``: no per-node metrics port); the head's two Prometheus exporters (dashboard and
autoscaler metrics, read-only, no credential, cannot be turned off or bound to loopback) get ports of the cluster's own
block. ``audit`` lists every listening socket of the cluster's processes and checks each of those rules.

Every node also gets ``MLFLOW_TRACKING_URI`` (the cluster's MLflow server), ``PATH`` with this venv's ``bin`` first
(``python`` in a job's entrypoint is this venv's python) and ``HF_HUB_OFFLINE=1``; job processes inherit them.

Python API (tests):

    with LocalCluster("runs/cluster", workers=1, cpus_per_node=2) as c:
        c.submit_env()        # env for `ray job ...` clients
        name = c.add_worker(); c.kill_node(name)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.exceptions import RayError
from ray.job_submission import JobSubmissionClient
from ray.util.state import StateApiClient
from ray.util.state.common import ListApiOptions, StateResource
from ray.util.state.exception import RayStateApiException

from cluster.exposure import cluster_audit, format_report
from cluster.processes import GRACE_S, LOOPBACK, alive, kill_tree, node_ip, port_free, start_time
from pipelines.ui import start_server

DEFAULT_DIR = "runs/cluster"
DEFAULT_BASE_PORT = 46379
HOST = LOOPBACK
AUTH_MODE = "token"
TOKEN_FILE = "auth_token"
# Variables that must not leak from the caller's environment into the cluster's processes or clients: another token
# (RAY_AUTH_TOKEN takes precedence over RAY_AUTH_TOKEN_PATH), or the switch a private local Ray uses to bind to the
# loopback address (it stops `ray start --address` from joining a cluster).
FOREIGN_ENV = ("RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
STATE_FILE = "state.json"

# Port layout from the base port P: P gcs, P+1 dashboard, P+2 ray client server, P+3 MLflow server, P+4 and P+5 the
# head's Prometheus exporters (dashboard, autoscaler); node i (0 = head, 1.. = workers in order of creation) uses
# P+10+10*i ... P+15+10*i.
CLUSTER_PORTS = {"gcs": 0, "dashboard": 1, "ray_client_server": 2, "mlflow": 3, "dashboard_metrics": 4,
                 "autoscaler_metrics": 5}
NODE_PORTS = {"node_manager": 0, "object_manager": 1, "dashboard_agent_listen": 2, "dashboard_agent_grpc": 3,
              "metrics_export": 4, "runtime_env_agent": 5}
NODE_STRIDE = 10
MAX_NODES = 16
WORKER_PORT_RANGE = (10002, 19999)
# Every node carries the label NODE_LABEL=<its name>: the state API lists node labels (not ports), so this is how a
# Ray node is matched to the process that `up`/`add-worker` started and recorded.
NODE_LABEL = "glccl/node"
# Ray's job and state clients take their address from these variables, when set, over the address they are given;
# this process may have them set for another Ray (a private local Ray, a job's driver).
ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_STATE_LOCK = threading.RLock()
_ENV_LOCK = threading.Lock()


class ClusterError(RuntimeError):
    pass


def venv_bin() -> Path:
    """The bin/ directory of the running interpreter (not resolved: a venv's python is a symlink)."""
    return Path(sys.executable).parent


def ray_exe() -> str:
    exe = venv_bin() / "ray"
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def cluster_ports(base: int) -> dict[str, int]:
    return {k: base + off for k, off in CLUSTER_PORTS.items()}


def node_ports(base: int, index: int) -> dict[str, int]:
    return {k: base + 10 + NODE_STRIDE * index + off for k, off in NODE_PORTS.items()}


def all_ports(base: int, nodes: int = MAX_NODES) -> list[int]:
    ports = list(cluster_ports(base).values())
    for i in range(nodes):
        ports += list(node_ports(base, i).values())
    return ports


def find_base_port(start: int = DEFAULT_BASE_PORT, tries: int = 40, nodes: int = 4) -> int:
    """The first base port from ``start`` (steps of 200) whose whole block is free."""
    for k in range(tries):
        base = start + 200 * k
        if all(port_free(p) for p in all_ports(base, nodes)):
            return base
    raise RuntimeError(f"no free block of ports from {start}")


def write_token(path: Path) -> str:
    """A new random token (256 bits, hex) written to ``path`` with mode 0600 (created so: never readable by others)."""
    token = secrets.token_hex(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    tmp.replace(path)
    return token


@contextmanager
def _explicit_address(url: str) -> Iterator[None]:
    """While a Ray client resolves its address: ``ADDRESS_ENV`` variables that name another cluster are unset."""
    with _ENV_LOCK:
        saved = {k: os.environ.pop(k) for k in ADDRESS_ENV if os.environ.get(k, url) != url}
        try:
            yield
        finally:
            os.environ.update(saved)


class DashboardError(ConnectionError):
    """The head's job server or state API did not answer, refused the token, or failed the request."""


@contextmanager
def _dashboard_call(what: str) -> Iterator[None]:
    """Ray's clients raise their own errors (``RuntimeError``s, ``RayStateApiException``, ``AuthenticationError``) next
    to ``OSError``s: one ``DashboardError`` (an ``OSError``) for callers that wait or report."""
    try:
        yield
    except ClusterError:
        raise
    except (RayStateApiException, RayError, RuntimeError, ValueError) as e:
        raise DashboardError(f"{what}: {e}") from e


# ---------------------------------------------------------------------------------------------------------------------
# the cluster


@dataclass
class NodeSpec:
    name: str
    index: int
    head: bool
    num_cpus: int
    object_store_bytes: int
    num_gpus: int = 0


class LocalCluster:
    """Head + worker nodes + MLflow server on this machine; the state lives in ``<cluster_dir>/state.json``.

    ``LocalCluster(dir, ...)`` describes a new cluster (``up()`` starts it); ``LocalCluster.load(dir)`` attaches to a
    running one. As a context manager it starts on enter and stops (by PID) on exit, errors included.
    """

    def __init__(self, cluster_dir: str | Path = DEFAULT_DIR, workers: int = 1, cpus_per_node: int = 2,
                 head_cpus: int | None = None, base_port: int | None = None, object_store_mb: int = 1024,
                 mlflow: bool = True, extra_env: dict[str, str] | None = None, keep_temp: bool = False):
        self.dir = Path(cluster_dir).resolve()
        self.workers = workers
        self.cpus_per_node = cpus_per_node
        self.head_cpus = cpus_per_node if head_cpus is None else head_cpus
        self.base_port = base_port
        self.object_store_mb = object_store_mb
        self.with_mlflow = mlflow
        self.extra_env = dict(extra_env or {})
        self.keep_temp = keep_temp
        self.state: dict[str, Any] = {}

    # -- state -----------------------------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    @classmethod
    def load(cls, cluster_dir: str | Path = DEFAULT_DIR) -> LocalCluster:
        c = cls(cluster_dir)
        if not c.state_path.is_file():
            raise ClusterError(f"no local cluster state at {c.state_path} (start one: python -m cluster.local up)")
        c.state = json.loads(c.state_path.read_text())
        c.base_port = c.state["base_port"]
        c.keep_temp = c.state.get("keep_temp", False)
        c.extra_env = c.state.get("extra_env", {})
        c.object_store_mb = c.state.get("object_store_mb", c.object_store_mb)
        c.cpus_per_node = c.state.get("cpus_per_node", c.cpus_per_node)
        return c

    def _save(self) -> None:
        with _STATE_LOCK:  # up() and its MLflow thread both write the state
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state, indent=1))
            tmp.replace(self.state_path)

    @property
    def gcs_address(self) -> str:
        return self.state["gcs_address"]

    @property
    def dashboard_url(self) -> str:
        return self.state["dashboard_url"]

    @property
    def mlflow_uri(self) -> str | None:
        return self.state.get("mlflow_uri")

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return self.state.get("nodes", [])

    def node(self, name: str) -> dict[str, Any]:
        for n in self.nodes:
            if n["name"] == name:
                return n
        raise ClusterError(f"no node named {name!r} (nodes: {', '.join(n['name'] for n in self.nodes)})")

    @property
    def token_path(self) -> Path:
        return Path(self.state.get("auth_token_path") or self.dir / TOKEN_FILE)

    def token(self) -> str:
        """The cluster's token (read from its 0600 file)."""
        try:
            return self.token_path.read_text().strip()
        except OSError as e:
            raise ClusterError(f"cannot read the cluster's token {self.token_path}: {e.strerror}") from e

    def auth_env(self) -> dict[str, str]:
        """Ray's token authentication settings of this cluster: its processes and its clients all need them."""
        return {"RAY_AUTH_MODE": AUTH_MODE, "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def auth_headers(self) -> dict[str, str]:
        """The HTTP header that authenticates a client of the job server and the state API with this cluster's token.

        Ray's clients add a header of their own only from this process's Ray auth settings, which Ray reads once and
        which may belong to another Ray; a header given to them is sent as it is."""
        return {"Authorization": f"Bearer {self.token()}"}

    def job_client(self) -> JobSubmissionClient:
        """Ray's job client for this cluster, authenticated with its token (checks that the job server answers)."""
        with _dashboard_call(f"job server {self.dashboard_url}"), _explicit_address(self.dashboard_url):
            return JobSubmissionClient(self.dashboard_url, headers=self.auth_headers())

    def state_client(self) -> StateApiClient:
        """Ray's state API client for this cluster, authenticated with its token."""
        headers = {"Content-Type": "application/json", **self.auth_headers()}
        with _dashboard_call(f"state API {self.dashboard_url}"), _explicit_address(self.dashboard_url):
            return StateApiClient(self.dashboard_url, headers=headers)

    @property
    def metrics_ports(self) -> set[int]:
        """The head's two Prometheus exporters (read-only, no credential: see the module docstring)."""
        ports = cluster_ports(self.base_port)
        return {ports["dashboard_metrics"], ports["autoscaler_metrics"]}

    def client_env(self) -> dict[str, str]:
        """What a client of this cluster (``ray job ...``) needs in its environment. Ray's job clients let
        ``RAY_API_SERVER_ADDRESS`` and ``RAY_ADDRESS`` override even an explicit ``--address``: both are set."""
        env = {**self.auth_env(), "RAY_ADDRESS": self.dashboard_url, "RAY_API_SERVER_ADDRESS": self.dashboard_url}
        if self.mlflow_uri:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        return env

    def submit_env(self) -> dict[str, str]:
        """``os.environ`` plus ``client_env()``: the env for a ``ray job`` subprocess (another token dropped)."""
        return {**{k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}, **self.client_env()}

    def node_env(self) -> dict[str, str]:
        """Environment of every node process (and so of every worker and job driver)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_JOB_", "RAY_RAYLET_")) and k not in FOREIGN_ENV}
        env.update(self.auth_env())
        env["RAY_enable_metrics_collection"] = "0"  # no unauthenticated per-node metrics port
        ports = cluster_ports(self.base_port)
        env["DASHBOARD_METRIC_PORT"] = str(ports["dashboard_metrics"])
        env["AUTOSCALER_METRIC_PORT"] = str(ports["autoscaler_metrics"])
        env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("HF_HUB_OFFLINE", "1")
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["GLCCL_LOCAL_CLUSTER"] = str(self.dir)
        # Ray code that looks the cluster up without an address (state API clients in Train's helper actors) would
        # otherwise scan the machine and fail with "Found multiple active Ray instances" when other clusters run here.
        env["RAY_ADDRESS"] = self.gcs_address
        env["RAY_API_SERVER_ADDRESS"] = self.dashboard_url
        if self.mlflow_uri:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        env.update(self.state.get("extra_env", self.extra_env))
        return env

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def up(self, timeout_s: float = 120.0) -> LocalCluster:
        if self.state_path.is_file():
            old = json.loads(self.state_path.read_text())
            if any(alive(n.get("pid"), n.get("create_time")) for n in old.get("nodes", [])):
                raise ClusterError(f"a local cluster from {self.state_path} is running: `python -m cluster.local "
                                   f"down --dir {self.dir}` first")
            stale = LocalCluster(self.dir)  # a cluster that died without `down`: end its leftovers, drop its temp dir
            stale.state = old
            stale.down(grace_s=2)
        base = self.base_port if self.base_port is not None else find_base_port(DEFAULT_BASE_PORT)
        busy = [p for p in all_ports(base, 1 + self.workers) if not port_free(p)]
        if busy:
            raise ClusterError(f"ports {busy} are taken: choose another --base-port")
        if not 0 < self.workers < MAX_NODES:
            raise ClusterError(f"--workers must be in 1..{MAX_NODES - 1}")
        self._check_memory()
        self.base_port = base
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        ports = cluster_ports(base)
        ip = node_ip()
        temp_root = tempfile.mkdtemp(prefix=f"glc{base}-", dir="/tmp")  # short: Ray's socket paths < 108 chars
        self.state = {
            "version": 1, "created": time.time(), "cluster_dir": str(self.dir), "base_port": base, "node_ip": ip,
            "gcs_address": f"{ip}:{ports['gcs']}", "dashboard_url": f"http://{HOST}:{ports['dashboard']}",
            "ray_client_address": f"ray://{HOST}:{ports['ray_client_server']}", "ports": ports,
            "temp_root": temp_root, "auth_mode": AUTH_MODE, "auth_token_path": str(self.dir / TOKEN_FILE),
            "keep_temp": self.keep_temp,
            "extra_env": self.extra_env, "object_store_mb": self.object_store_mb, "cpus_per_node": self.cpus_per_node,
            "python": sys.executable, "ray": ray_exe(), "nodes": [], "next_index": 0, "mlflow": None,
            "mlflow_uri": f"http://{HOST}:{ports['mlflow']}" if self.with_mlflow else None,
        }
        write_token(self.token_path)  # a new token for every cluster: clients of an earlier one are shut out
        self._save()
        ml_error: list[BaseException] = []
        ml_thread = None
        try:
            if self.with_mlflow:  # starts while the nodes start (its health wait takes seconds)
                ml_thread = threading.Thread(target=self._start_mlflow, args=(ports["mlflow"], ml_error), daemon=True)
                ml_thread.start()
            self._start_node(NodeSpec("head", 0, True, self.head_cpus, self.object_store_mb * 2**20))
            self._wait_dashboard(timeout_s)
            for _ in range(self.workers):
                self.add_worker(wait=False)
            self.wait_for_nodes(1 + self.workers, timeout_s)
            if ml_thread is not None:
                ml_thread.join(timeout_s)
                if ml_error or ml_thread.is_alive():
                    raise ClusterError(f"MLflow server did not start: {ml_error[0] if ml_error else 'timeout'}; "
                                       f"see {self.dir / 'logs' / 'mlflow.log'}")
        except BaseException:
            if ml_thread is not None:
                ml_thread.join(timeout_s)
            self.down()
            raise
        return self

    def _check_memory(self) -> None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        want = self.object_store_mb * 2**20 * (1 + self.workers)
        if want > 0.4 * total:
            raise ClusterError(f"object stores of {want / 2**30:.1f} GiB in all exceed 40% of this machine's "
                               f"{total / 2**30:.1f} GiB: lower --object-store-mb")

    def _start_mlflow(self, port: int, errors: list[BaseException]) -> None:
        """The lean MLflow server of ``pipelines.ui`` (sqlite store and artifacts under <dir>/mlflow), kept by PID.

        Runs in a thread during ``up``; ``up`` joins it before any teardown, so its PID is always recorded (a server
        that never became healthy is stopped by ``start_server`` itself)."""
        log = self.dir / "logs" / "mlflow.log"
        store = self.dir / "mlflow"
        try:
            proc = start_server(store, HOST, port, log_path=log)
        except BaseException as e:  # reported by up()
            errors.append(e)
            return
        record = {"pid": proc.pid, "create_time": start_time(proc.pid), "port": port, "log": str(log),
                  "backend_store_uri": f"sqlite:///{store / 'mlflow.db'}", "artifact_root": str(store / "mlartifacts")}
        with _STATE_LOCK:
            self.state["mlflow"] = record
        self._save()

    def _node_cmd(self, spec: NodeSpec, temp_dir: str) -> list[str]:
        np_ = node_ports(self.base_port, spec.index)
        cp = cluster_ports(self.base_port)
        cmd = [ray_exe(), "start", "--block", "--disable-usage-stats", f"--node-ip-address={HOST}",
               f"--temp-dir={temp_dir}", f"--num-cpus={spec.num_cpus}", f"--num-gpus={spec.num_gpus}",
               f"--object-store-memory={spec.object_store_bytes}",
               f"--node-manager-port={np_['node_manager']}", f"--object-manager-port={np_['object_manager']}",
               f"--dashboard-agent-listen-port={np_['dashboard_agent_listen']}",
               f"--dashboard-agent-grpc-port={np_['dashboard_agent_grpc']}",
               f"--metrics-export-port={np_['metrics_export']}", f"--runtime-env-agent-port={np_['runtime_env_agent']}",
               f"--min-worker-port={WORKER_PORT_RANGE[0]}", f"--max-worker-port={WORKER_PORT_RANGE[1]}",
               f"--labels={NODE_LABEL}={spec.name}"]
        if spec.head:
            cmd += ["--head", f"--port={cp['gcs']}", "--include-dashboard=true", f"--dashboard-host={HOST}",
                    f"--dashboard-port={cp['dashboard']}", f"--ray-client-server-port={cp['ray_client_server']}"]
        else:
            cmd += [f"--address={self.gcs_address}"]
        return cmd

    def _start_node(self, spec: NodeSpec) -> dict[str, Any]:
        temp_dir = str(Path(self.state["temp_root"]) / ("h" if spec.head else f"w{spec.index}"))
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
        log = self.dir / "logs" / f"{spec.name}.log"
        cmd = self._node_cmd(spec, temp_dir)
        with open(log, "ab") as out:
            out.write(f"$ {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, env=self.node_env(), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(self.dir))
        ctime = start_time(proc.pid)
        node = {"name": spec.name, "index": spec.index, "role": "head" if spec.head else "worker", "pid": proc.pid,
                "create_time": ctime, "temp_dir": temp_dir, "num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus,
                "object_store_bytes": spec.object_store_bytes, "ports": node_ports(self.base_port, spec.index),
                "log": str(log), "cmd": cmd}
        self.state["nodes"].append(node)
        self.state["next_index"] = max(self.state.get("next_index", 0), spec.index + 1)
        self._save()
        self._procs = getattr(self, "_procs", {})
        self._procs[spec.name] = proc  # reaped by us when it ends (no zombies in the test process)
        return node

    def add_worker(self, num_cpus: int | None = None, wait: bool = True, timeout_s: float = 120.0) -> str:
        index = self.state.get("next_index", 1)
        if index >= MAX_NODES:
            raise ClusterError(f"at most {MAX_NODES - 1} worker nodes over the cluster's life (port layout)")
        name = f"worker-{index}"
        busy = [p for p in node_ports(self.base_port, index).values() if not port_free(p)]
        if busy:
            raise ClusterError(f"ports {busy} for {name} are taken")
        cpus = self.cpus_per_node if num_cpus is None else num_cpus
        self._start_node(NodeSpec(name, index, False, cpus, self.object_store_mb * 2**20))
        if wait:
            self.wait_for_node(name, timeout_s)
        return name

    def wait_for_node(self, name: str, timeout_s: float = 120.0) -> dict[str, Any]:
        """Wait until the GCS lists this node (matched by its node manager port) as ALIVE."""
        node = self.node(name)
        port = node["ports"]["node_manager"]
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if not alive(node["pid"], node["create_time"]):
                raise ClusterError(f"node {name} exited; see {node['log']}")
            try:
                for n in self.ray_nodes():
                    if n["node_manager_port"] == port and n["state"] == "ALIVE":
                        return n
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise ClusterError(f"node {name} did not join in {timeout_s:.0f} s; see {node['log']}")

    def live_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.nodes if alive(n["pid"], n["create_time"])]

    def kill_node(self, name: str, hard: bool = True, grace_s: float = GRACE_S) -> int:
        """End one node's process tree (SIGKILL by default: a node failure). Returns the processes signalled."""
        node = self.node(name)
        n = kill_tree([(node["pid"], node["create_time"])], grace_s=grace_s, hard=hard)
        self._reap(name)
        node["stopped"] = time.time()
        self._save()
        return n

    def _reap(self, name: str) -> None:
        proc = getattr(self, "_procs", {}).pop(name, None)
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def down(self, grace_s: float = GRACE_S) -> int:
        """Stop every process this cluster started (workers, head, MLflow server) by PID; remove the temp dirs.

        Idempotent: a second call (an atexit hook after a test finaliser) finds nothing left to end."""
        if self.state.get("stopped"):
            return 0
        if not self.state:
            if not self.state_path.is_file():
                return 0
            self.state = json.loads(self.state_path.read_text())
        roots = [(n["pid"], n.get("create_time")) for n in self.nodes if n.get("pid")]
        ml = self.state.get("mlflow") or {}
        if ml.get("pid"):
            roots.append((ml["pid"], ml.get("create_time")))
        n = kill_tree(roots, grace_s=grace_s) if roots else 0
        for node in self.nodes:
            self._reap(node["name"])
        temp_root = self.state.get("temp_root")
        if temp_root and not self.state.get("keep_temp") and Path(temp_root).name.startswith("glc"):
            shutil.rmtree(temp_root, ignore_errors=True)
        self.state["stopped"] = time.time()
        self._save()
        self.state_path.replace(self.dir / "state.stopped.json")  # `status`/`submit` no longer find it
        return n

    def __enter__(self) -> LocalCluster:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # -- queries ---------------------------------------------------------------------------------------------------

    def _wait_dashboard(self, timeout_s: float) -> None:
        head = self.node("head")
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if not alive(head["pid"], head["create_time"]):
                raise ClusterError(f"the head node exited; see {head['log']} and {head['temp_dir']}")
            try:
                self.job_client()
                return
            except OSError:
                time.sleep(0.5)
        raise ClusterError(f"the head's dashboard did not answer in {timeout_s:.0f} s; see {head['log']}")

    def ray_nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes as the GCS sees them (Ray's state API): node id, state, head, resources, and the node
        manager port recorded for the node of that name (``NODE_LABEL``; None for a node this cluster did not start)."""
        client = self.state_client()
        with _dashboard_call(f"state API {self.dashboard_url}"):
            nodes = client.list(StateResource.NODES, options=ListApiOptions(timeout=5), raise_on_missing_output=False)
        ports = {n["name"]: n["ports"]["node_manager"] for n in self.nodes}
        out = []
        for n in nodes:
            name = (n.labels or {}).get(NODE_LABEL)
            out.append({"node_id": n.node_id, "state": n.state, "node_manager_port": ports.get(name),
                        "is_head": n.is_head_node, "resources": n.resources_total or {}})
        return out

    def wait_for_nodes(self, count: int, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        deadline = time.time() + timeout_s
        last: list[dict[str, Any]] = []
        while time.time() < deadline:
            for n in self.nodes:
                if "stopped" not in n and not alive(n["pid"], n["create_time"]):
                    raise ClusterError(f"node {n['name']} exited; see {n['log']}")
            try:
                last = [n for n in self.ray_nodes() if n["state"] == "ALIVE"]
                if len(last) >= count:
                    return last
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise ClusterError(f"{len(last)} of {count} nodes alive after {timeout_s:.0f} s")

    def jobs(self) -> list[dict[str, Any]]:
        """Every job of the cluster (Ray's job client), as JSON-like dicts: ``submission_id``, ``status``, ..."""
        client = self.job_client()
        with _dashboard_call(f"job server {self.dashboard_url}"):
            return [j.model_dump(mode="json") for j in client.list_jobs()]

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = {"cluster_dir": str(self.dir), "gcs_address": self.gcs_address,
                              "dashboard_url": self.dashboard_url, "mlflow_uri": self.mlflow_uri,
                              "auth_token_path": str(self.token_path), "processes": []}
        for n in self.nodes:
            st["processes"].append({"name": n["name"], "pid": n["pid"], "alive": alive(n["pid"], n["create_time"]),
                                    "cpus": n["num_cpus"], "temp_dir": n["temp_dir"]})
        ml = self.state.get("mlflow")
        if ml:
            up = alive(ml["pid"], ml["create_time"])
            try:
                with urllib.request.urlopen(f"{self.mlflow_uri}/health", timeout=3) as r:
                    healthy = r.status == 200
            except OSError:
                healthy = False
            st["processes"].append({"name": "mlflow", "pid": ml["pid"], "alive": up, "healthy": healthy})
        try:
            st["ray_nodes"] = self.ray_nodes()
            st["jobs"] = [{"job_id": j.get("job_id") or j.get("submission_id"), "status": j.get("status"),
                           "entrypoint": j.get("entrypoint")} for j in self.jobs()]
        except (OSError, ValueError) as e:
            st["ray_nodes"], st["jobs"], st["error"] = [], [], f"dashboard unreachable: {e}"
        return st


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def _print_status(st: dict[str, Any]) -> None:
    print(f"cluster dir : {st['cluster_dir']}")
    print(f"GCS address : {st['gcs_address']}")
    print(f"dashboard   : {st['dashboard_url']}  (RAY_AUTH_MODE={AUTH_MODE}, token {st['auth_token_path']})")
    print(f"MLflow      : {st['mlflow_uri']}")
    print("processes:")
    for p in st["processes"]:
        extra = f" cpus={p['cpus']} temp={p['temp_dir']}" if "cpus" in p else f" healthy={p.get('healthy')}"
        print(f"  {p['name']:<10} pid {p['pid']:<8} {'alive' if p['alive'] else 'DEAD '}{extra}")
    if st.get("error"):
        print(st["error"])
    alive_nodes = [n for n in st["ray_nodes"] if n["state"] == "ALIVE"]
    print(f"ray nodes: {len(alive_nodes)} alive of {len(st['ray_nodes'])}")
    for n in st["ray_nodes"]:
        res = {k: v for k, v in n["resources"].items() if k in ("CPU", "GPU", "object_store_memory")}
        print(f"  {n['node_id'][:12] if n['node_id'] else '?':<12} {n['state']:<6} head={n['is_head']} "
              f"node_manager_port={n['node_manager_port']} {res}")
    print(f"jobs: {len(st['jobs'])}")
    for j in st["jobs"]:
        print(f"  {j['job_id']}  {j['status']:<9} {j['entrypoint']}")


def _env_lines(c: LocalCluster) -> list[str]:
    lines = [f"export {k}={shlex.quote(v)}" for k, v in c.client_env().items()]
    return lines + ["unset RAY_AUTH_TOKEN"]  # it would take precedence over RAY_AUTH_TOKEN_PATH


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start head + workers + MLflow server")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--cpus-per-node", type=int, default=2, help="logical CPUs of each worker node")
    up.add_argument("--head-cpus", type=int, default=None, help="logical CPUs of the head (default: --cpus-per-node)")
    up.add_argument("--base-port", type=int, default=None,
                    help=f"first port of the block (default: the first free block from {DEFAULT_BASE_PORT})")
    up.add_argument("--object-store-mb", type=int, default=1024, help="object store of each node, MiB")
    up.add_argument("--no-mlflow", action="store_true", help="no MLflow server (jobs then log to sqlite in storage)")
    up.add_argument("--keep-temp", action="store_true", help="keep the nodes' temp dirs (Ray logs) on down")
    for name in ("status", "down", "env", "audit", "add-worker", "remove-worker"):
        sp = sub.add_parser(name) if name != "up" else up
        if name == "add-worker":
            sp.add_argument("--cpus", type=int, default=None)
        if name == "remove-worker":
            sp.add_argument("name", help="e.g. worker-1")
            sp.add_argument("--kill", action="store_true", help="SIGKILL (simulate a node failure)")
        if name == "status":
            sp.add_argument("--json", action="store_true")
    for sp in sub.choices.values():
        sp.add_argument("--dir", default=DEFAULT_DIR, help=f"cluster dir (state, logs, MLflow store); {DEFAULT_DIR}")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    try:
        if args.cmd == "up":
            c = LocalCluster(args.dir, workers=args.workers, cpus_per_node=args.cpus_per_node,
                             head_cpus=args.head_cpus, base_port=args.base_port, object_store_mb=args.object_store_mb,
                             mlflow=not args.no_mlflow, keep_temp=args.keep_temp)
            t0 = time.time()
            c.up()
            print(f"local cluster up in {time.time() - t0:.0f} s: head + {args.workers} worker(s); state "
                  f"{c.state_path}")
            print(f"  dashboard / job address : {c.dashboard_url}")
            print(f"  GCS address             : {c.gcs_address}")
            print(f"  MLflow                  : {c.mlflow_uri}")
            print("client environment (every `ray job ...` and driver needs it):")
            print("\n".join("  " + line for line in _env_lines(c)))
            return 0
        c = LocalCluster.load(args.dir)
        if args.cmd == "status":
            st = c.status()
            if args.json:
                print(json.dumps(st, indent=1))
            else:
                _print_status(st)
            return 0 if all(p_["alive"] for p_ in st["processes"] if p_["name"] in ("head", "mlflow")) else 1
        if args.cmd == "env":
            print("\n".join(_env_lines(c)))
            return 0
        if args.cmd == "audit":
            findings = cluster_audit(c)
            print(format_report(findings))
            return 1 if any(f.verdict == "OPEN" for f in findings) else 0
        if args.cmd == "add-worker":
            print(c.add_worker(num_cpus=args.cpus))
            return 0
        if args.cmd == "remove-worker":
            if c.node(args.name)["role"] == "head":
                raise ClusterError("the head is not a worker: use down")
            print(f"{args.name}: {c.kill_node(args.name, hard=args.kill)} processes ended")
            return 0
        if args.cmd == "down":
            n = c.down()
            print(f"local cluster down: {n} processes ended")
            return 0
    except ClusterError as e:
        print(f"cluster.local: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
