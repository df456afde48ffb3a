"""Exposure audit: every socket a process tree listens on, and whether a stranger on the network can use it.

    glccl exposure --pid PID [--pid PID2]                 # a training run, a sweep, `glccl ui`, ...
    glccl exposure --cluster-dir runs/cluster             # a local cluster (also: python -m cluster.local audit)

Each listening TCP socket (and bound UDP socket) of the processes is classified:

- ``loopback``: bound to 127.0.0.0/8 or ::1 (only this machine can connect);
- ``token``: bound wider, and a request without the token is refused there, probed from the machine's network
  address: an HTTP request gets 401, or a Ray gRPC service answers UNAUTHENTICATED (and, as a control, answers
  otherwise with the token). gRPC health checks answer without a token; they carry no data;
- ``metrics``: one of the read-only Prometheus exporters named as such by the caller (a local cluster's
  dashboard and autoscaler exporters), checked to serve Prometheus text;
- ``OPEN``: anything else bound beyond the loopback address. The audit fails on it.

The exit status is 1 when any socket is OPEN. Only the given process trees are inspected (their descendants and the
sessions they lead), never other processes on the machine. This module is the audit; the command lines above live in
``cluster.exposure_cli`` and ``cluster.local``.
"""

from __future__ import annotations

import ipaddress
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

from cluster.processes import node_ip, process_tree

# One Ray gRPC method per Ray server kind (an empty request is a valid default message for each), and whether the
# control call with the token is harmless enough to make (read-only methods only).
RAY_GRPC_PROBES = (
    ("/ray.rpc.NodeInfoGcsService/GetClusterId", True),     # GCS
    ("/ray.rpc.NodeManagerService/GetSystemConfig", True),  # raylet node manager
    ("/ray.rpc.ObjectManagerService/Pull", False),          # raylet object manager: probed without the token only
    ("/ray.rpc.CoreWorkerService/NumPendingTasks", True),   # drivers and worker processes
    ("/ray.rpc.ReporterService/HealthCheck", True),         # dashboard agent
    ("/ray.rpc.RayletDriver/KVExists", True),               # Ray client server
)


@dataclass
class Listener:
    pid: int
    process: str
    proto: str  # tcp | udp
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class Finding:
    listener: Listener
    verdict: str  # loopback | token | metrics | OPEN
    detail: str


def is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _name(proc) -> str:
    try:
        name = proc.name()
        if name.startswith("python"):
            cmd = proc.cmdline()
            for i, arg in enumerate(cmd[1:], 1):  # `python -m module`, `python -c ...` or `python path/to/script.py`
                if arg == "-m" and i + 1 < len(cmd):
                    return f"python -m {cmd[i + 1]}"
                if arg == "-c":
                    return "python -c"
                if not arg.startswith("-"):
                    return f"python {Path(arg).name}"
        return name
    except Exception:  # noqa: BLE001 - the process ended meanwhile
        return "?"


def listeners(procs: list) -> list[Listener]:
    """Listening TCP sockets and bound, unconnected UDP sockets of these processes (psutil.Process objects)."""
    by_pid = {p.pid: p for p in procs}
    out: list[Listener] = []
    seen: set[tuple] = set()
    for c in psutil.net_connections("inet"):
        if c.pid not in by_pid or not c.laddr:
            continue
        proto = "tcp" if c.type == 1 else "udp"  # socket.SOCK_STREAM == 1
        if proto == "tcp" and c.status != psutil.CONN_LISTEN:
            continue
        if proto == "udp" and c.raddr:
            continue
        key = (c.pid, proto, c.laddr.ip, c.laddr.port)
        if key not in seen:
            seen.add(key)
            out.append(Listener(c.pid, _name(by_pid[c.pid]), proto, c.laddr.ip, c.laddr.port))
    return sorted(out, key=lambda x: (x.port, x.host, x.pid))


def _probe_host(listener: Listener, network_ip: str) -> str:
    if listener.host in ("0.0.0.0", "::", ""):
        return network_ip
    ip = ipaddress.ip_address(listener.host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return listener.host


def _http_status(host: str, port: int, token: str | None, timeout: float = 3.0) -> tuple[int | None, str]:
    url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
            return r.status, r.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except Exception:  # noqa: BLE001 - not HTTP/1 (gRPC speaks HTTP/2 only), or refused
        return None, ""


def _grpc_code(host: str, port: int, method: str, token: str | None, timeout: float = 3.0) -> str:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    channel = grpc.insecure_channel(target)
    try:
        call = channel.unary_unary(method, request_serializer=lambda x: x, response_deserializer=lambda x: x)
        call(b"", timeout=timeout, metadata=[("authorization", f"Bearer {token}")] if token else None)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name
    finally:
        channel.close()


def classify(listener: Listener, token: str | None, network_ip: str, metrics_ports: set[int] = frozenset()) -> Finding:
    """Probe one socket as a stranger would (no token) and say how it is protected."""
    if is_loopback(listener.host):
        return Finding(listener, "loopback", "only this machine can connect")
    if listener.proto == "udp":
        return Finding(listener, "OPEN", "UDP socket bound beyond the loopback address")
    host = _probe_host(listener, network_ip)
    status, body = _http_status(host, listener.port, None)
    if status in (401, 403):
        ctl, _ = _http_status(host, listener.port, token) if token else (None, "")
        if token and ctl in (401, 403):
            return Finding(listener, "OPEN", f"HTTP {status} without the token, and {ctl} with it: not Ray's token")
        return Finding(listener, "token", f"HTTP {status} without the token" + (f", {ctl} with it" if token else ""))
    if status is not None:
        if listener.port in metrics_ports and body.startswith("# HELP"):
            return Finding(listener, "metrics", f"read-only Prometheus exporter (HTTP {status} without a token)")
        return Finding(listener, "OPEN", f"HTTP {status} without any token")
    for method, control in RAY_GRPC_PROBES:
        code = _grpc_code(host, listener.port, method, None)
        if code == "UNIMPLEMENTED":  # another Ray service: try the next kind
            continue
        service = method.split("/")[1].rsplit(".", 1)[-1]
        if code != "UNAUTHENTICATED":
            return Finding(listener, "OPEN", f"gRPC {service} answers {code} without a token")
        ctl = _grpc_code(host, listener.port, method, token) if token and control else None
        if ctl == "UNAUTHENTICATED":
            return Finding(listener, "OPEN", f"gRPC {service} refuses the cluster's token too: not this Ray's token")
        return Finding(listener, "token", f"gRPC {service}: UNAUTHENTICATED without the token"
                       + (f", {ctl} with it" if ctl else ""))
    return Finding(listener, "OPEN", "bound beyond the loopback address and not recognised as token-protected")


def audit(procs: list, token: str | None = None, metrics_ports: set[int] = frozenset(),
          network_ip: str | None = None) -> list[Finding]:
    ip = network_ip or node_ip()
    return [classify(listener, token, ip, set(metrics_ports)) for listener in listeners(procs)]


def format_report(findings: list[Finding]) -> str:
    lines = [f"{'address':<26} {'pid':>7}  {'process':<34} {'verdict':<9} detail"]
    for f in findings:
        lines.append(f"{f.listener.proto + ' ' + f.listener.address:<26} {f.listener.pid:>7}  "
                     f"{f.listener.process[:34]:<34} {f.verdict:<9} {f.detail}")
    bad = [f for f in findings if f.verdict == "OPEN"]
    lines.append(f"{len(findings)} sockets: " + ", ".join(
        f"{v} {sum(f.verdict == v for f in findings)}" for v in ("loopback", "token", "metrics", "OPEN")))
    if bad:
        lines.append(f"FAIL: {len(bad)} socket(s) reachable beyond 127.0.0.1 without a credential")
    return "\n".join(lines)


def cluster_audit(cluster) -> list[Finding]:
    """Audit a running ``cluster.local.LocalCluster``: every process it started, with its token (and its two
    Prometheus exporters named as such)."""
    roots = [(n["pid"], n.get("create_time")) for n in cluster.live_nodes()]
    ml = cluster.state.get("mlflow") or {}
    if ml.get("pid"):
        roots.append((ml["pid"], ml.get("create_time")))
    return audit(process_tree(roots), cluster.token(), cluster.metrics_ports)
