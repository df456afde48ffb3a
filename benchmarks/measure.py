"""How every benchmark measures: the machine it ran on, synchronised wall and CPU timing, warm-up plus repeats, and
peak memory. One copy, so that two benchmarks' numbers mean the same thing.

Only torch and the standard library; nothing here imports Ray or the model code.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# ---------------------------------------------------------------------------------------------------------------------
# the machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: str | torch.device = "cpu", threads: int | None = None) -> str:
    """One line naming the CPU, core count, torch build and torch threads (``threads``, when the measured work runs
    elsewhere with its own setting, else this process's), and the GPU when ``device`` is CUDA."""
    threads = threads or torch.get_num_threads()
    s = (f"{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
         f"({torch.backends.cpu.get_cpu_capability()}), {threads} thread{'s' if threads != 1 else ''}")
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        s += f"; GPU {torch.cuda.get_device_name()}"
    return s


# ---------------------------------------------------------------------------------------------------------------------
# timing


@dataclass(frozen=True)
class Timing:
    """One timed call: wall seconds and CPU seconds (of this process unless the caller chose another CPU clock)."""

    wall_s: float
    cpu_s: float


def sync(device: str | torch.device | None) -> None:
    """Wait for queued CUDA work; CUDA calls return before the kernels finish, so an unsynchronised timer lies."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str | torch.device | None = None,
          cpu_clock: Callable[[], float] = time.process_time) -> tuple[Any, Timing]:
    """Run ``fn()`` once between two synchronisations; returns ``(fn's result, Timing)``."""
    sync(device)
    t0, c0 = time.perf_counter(), cpu_clock()
    out = fn()
    sync(device)
    return out, Timing(time.perf_counter() - t0, cpu_clock() - c0)


def repeat(fn: Callable[[], Any], reps: int, warmup: int = 0, device: str | torch.device | None = None,
           cpu_clock: Callable[[], float] = time.process_time) -> list[Timing]:
    """``warmup`` untimed calls (first-call costs: imports, allocator growth, kernel selection), then ``reps`` timed
    ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    return [timed(fn, device, cpu_clock)[1] for _ in range(reps)]


def median(timings: Sequence[Timing]) -> Timing:
    """Median wall and median CPU seconds (each on its own): robust to one disturbed run on a shared machine."""
    return Timing(statistics.median(t.wall_s for t in timings), statistics.median(t.cpu_s for t in timings))


def tree_cpu_seconds(root: int | None = None) -> float:
    """User + system CPU seconds of process ``root`` (default: this one) and all its descendants (from /proc; Linux).

    For work done in other processes (Ray workers), which ``time.process_time`` does not see.
    """
    root = os.getpid() if root is None else root
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d)] = int(fields[1])
        ticks[int(d)] = int(fields[11]) + int(fields[12])
    keep = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                changed = True
    return sum(ticks.get(p, 0) for p in keep) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------------------------
# memory


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def malloc_for_measurement(device: torch.device) -> None:
    """glibc: give freed memory back (malloc_trim) and serve blocks >= 64 KiB by mmap from now on, so the resident set
    follows live memory (default glibc keeps freed blocks, which hides re-used memory from the peak). It makes every
    large allocation fault its pages in afresh, so it is only set for the memory run, after the timed runs."""
    if device.type != "cpu":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above a baseline: CPU resident set (VmHWM, reset via clear_refs) or CUDA allocated bytes."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return
        self.reset_ok = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.reset_ok = True
        except OSError:
            pass
        self.base = _status_kb("VmRSS") * 1024
        self.hwm0 = _status_kb("VmHWM") * 1024

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return max(0, torch.cuda.max_memory_allocated() - self.base)
        hwm = _status_kb("VmHWM") * 1024
        if not self.reset_ok and hwm <= self.hwm0:  # no reset and no new high-water mark: unknown, report a bound
            return max(0, _status_kb("VmRSS") * 1024 - self.base)
        return max(0, hwm - self.base)
