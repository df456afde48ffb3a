"""Processes and ports on this machine, strictly from recorded PIDs: what the local cluster (``cluster.local``) and
the exposure audit (``cluster.exposure``) both need.

A process tree here is a recorded root (PID plus start time, so a reused PID is never touched), its descendants and
the processes of the sessions it leads. Nothing else on the machine is ever included or signalled.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import psutil

LOOPBACK = "127.0.0.1"
GRACE_S = 10.0


def node_ip() -> str:
    """The address Ray itself picks for this machine (the interface of the default route; no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("8.8.8.8", 80))
            return s.getsockname()[0]
        except OSError:
            return LOOPBACK


def port_free(port: int, host: str = "") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _root(pid: int, create_time: float | None):
    """The process with this PID if it is still the one we started (same start time), else None."""
    try:
        p = psutil.Process(pid)
        if create_time is not None and abs(p.create_time() - create_time) > 1.0:
            return None
        return p
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_tree(roots: list[tuple[int, float | None]]) -> list:
    """The recorded root processes, all their descendants, and every process in a session led by one of them.

    Ray starts workers in process groups of their own and job drivers in sessions of their own; a worker whose raylet
    died is re-parented, so descendants alone are not enough. Sessions are followed to closure: a process belongs to
    the tree when its parent or its session leader does. Nothing else on the machine is ever included.
    """
    found: dict[int, Any] = {}
    for pid, ctime in roots:
        p = _root(pid, ctime)
        if p is None:
            continue
        found[p.pid] = p
        try:
            for c in p.children(recursive=True):
                found[c.pid] = c
        except psutil.NoSuchProcess:
            pass
    if not found:
        return []
    changed = True
    while changed:
        changed = False
        for p in psutil.process_iter(["pid", "ppid"]):
            if p.pid in found:
                continue
            try:
                sid = os.getsid(p.pid)
                if sid in found or p.info["ppid"] in found:
                    found[p.pid] = p
                    changed = True
            except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
                continue
    return list(found.values())


def kill_tree(roots: list[tuple[int, float | None]], grace_s: float = GRACE_S, hard: bool = False) -> int:
    """SIGTERM (or SIGKILL when ``hard``) every process of the trees at once; SIGKILL what is left after ``grace_s``.

    Returns the number of processes signalled."""
    procs = process_tree(roots)
    if not procs:
        return 0
    sig = signal.SIGKILL if hard else signal.SIGTERM
    for p in procs:
        try:
            p.send_signal(sig)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    _, alive_ = psutil.wait_procs(procs, timeout=1.0 if hard else grace_s)
    for p in alive_:
        try:
            p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    psutil.wait_procs(alive_, timeout=5.0)
    # anything started by the dying processes in the meantime (a worker being spawned)
    rest = process_tree(roots)
    for p in rest:
        try:
            p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return len(procs)


def start_time(pid: int) -> float | None:
    """The start time of a process (recorded next to its PID), or None when it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def alive(pid: int | None, create_time: float | None) -> bool:
    if not pid:
        return False
    p = _root(pid, create_time)
    if p is None:
        return False
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
