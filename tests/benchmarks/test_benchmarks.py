"""Smoke tests of the benchmarks (``python -m benchmarks.<name>``): tiny sizes, every method, finite numbers; and the
shared measuring helpers they all time with."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import benchmarks.similarity as bench
from benchmarks import measure
from benchmarks.similarity import cli

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_has_every_method(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["--quick", "--n", "64", "--shapes", "msrvtt", "--reps", "1", "--search-n", "32",
                       "--inprocess", "--threads", "1", "--max-run-s", "0.3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    shape = report["tables"]["fp32"]["msrvtt"]
    methods = [r["method"] for r in shape["results"]]
    assert methods == bench.all_methods()
    assert {"glccl", "glccl_naive", "meanp", "xpool"} <= set(methods)
    for r in shape["results"]:
        assert f"| {r['method']} |" in printed
        for key in ("wall_s", "cpu_s", "flops", "peak_bytes", "rate_at_run"):
            assert math.isfinite(r[key]) and r[key] >= 0, (r["method"], key, r[key])
        assert r["flops"] > 0 and 1 <= r["timed"] <= 64
        d = shape["derived"][r["method"]]
        assert all(math.isfinite(v) and v > 0 for v in d.values()), (r["method"], d)
    assert shape["rate"] > 0 and shape["cpu_rate"] > 0
    assert any("floor at the MSR-VTT shape" in t for t in report["targets"])
    s = report["search"]
    assert s["n"] == 32 and s["exhaustive_s"] > 0 and len(s["rows"]) == 6
    for row in s["rows"]:
        assert all(0.0 <= v <= 1.0 for v in row["recall"].values())
        assert math.isfinite(row["speedup"]) and row["speedup"] > 0
    full = [row for row in s["rows"] if row["shortlist"] == 32]
    assert full and all(v == 1.0 for row in full for v in row["recall"].values())  # shortlist = gallery: exact
    assert "recall@10" in printed and "speed-up" in printed


def test_worker_subprocess_measures_memory():
    """The worker is ``python -m benchmarks.similarity --_worker``, a fresh process per measurement."""
    r = cli._worker_call({"kind": "measure", "method": "glccl", "shape_name": "msrvtt", "n": 16, "reps": 1,
                            "max_run_s": 60.0, "rate_s": 0.05, "threads": 1}, inprocess=False)
    assert r["method"] == "glccl" and r["timed"] == 16 and r["wall_s"] > 0
    # the 16 x 16 GLCCL run allocates its work blocks (MBs): a positive, bounded peak
    assert 0 < r["peak_bytes"] < 2e9


def test_fit_extrapolate():
    # t(m) = 2 m + 0.5 m^2 exactly: the fit recovers it
    pts = [(m, 2 * m + 0.5 * m * m) for m in (10, 20, 40)]
    t, a, b = bench.fit_extrapolate(pts, 1000)
    assert a == pytest.approx(2) and b == pytest.approx(0.5) and t == pytest.approx(2000 + 500_000)
    # purely per-item work (no growth with pairs) is extrapolated linearly, not quadratically
    t, a, b = bench.fit_extrapolate([(16, 1.6), (32, 3.2), (64, 6.4)], 1000)
    assert b == pytest.approx(0, abs=1e-9) and t == pytest.approx(100.0)
    # a single size: per-pair scaling
    assert bench.fit_extrapolate([(20, 40.0)], 40)[0] == pytest.approx(160.0)


def test_flops_and_features():
    assert bench.method_flops("glccl", 10, 10, K=12, Nw=32, D=512) < bench.method_flops("glccl_naive", 10, 10, K=12,
                                                                                         Nw=32, D=512)
    assert bench.method_flops("meanp", 4, 5, K=12, Nw=32, D=8) == 2 * 4 * 5 * 8 + 2 * 5 * 12 * 8  # cosine GEMM + frame means
    text, video, t2v = bench.structured_features(20, {"K": 4, "Nw": 8, "D": 16})
    assert text["words"].shape == (20, 8, 16) and video["frames"].shape == (20, 4, 16)
    assert bool(text["word_mask"][:, :8].all()) and t2v.tolist() == list(range(20))


def test_ddp_step_benchmark_runs_both_modes():
    """python -m benchmarks.ddp_step: two real gloo ranks, both scoring modes timed, a finite speed-up printed."""
    import re

    out = subprocess.run([sys.executable, "-m", "benchmarks.ddp_step", "--quick", "--preset", "tiny",
                          "--batch", "8", "--frames", "4", "--words", "8"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| own texts") or
            line.startswith("| whole global")]
    assert len(rows) == 2, out.stdout
    # pairs scored per rank: 4 x 8 (own texts) and 8 x 8 (whole matrix)
    assert rows[0].split("|")[2].strip() == "32" and rows[1].split("|")[2].strip() == "64"
    for row in rows:
        assert float(row.split("|")[3]) > 0
    speedup = re.search(r"speed-up of row blocks: ([0-9.]+)x", out.stdout)
    assert speedup and math.isfinite(float(speedup.group(1))) and float(speedup.group(1)) > 0


def test_measure_timing_helpers():
    calls = []
    timings = measure.repeat(lambda: calls.append(time.sleep(0.002)), 3, warmup=2)
    assert len(calls) == 5 and len(timings) == 3
    assert all(t.wall_s >= 0.002 and t.cpu_s >= 0 for t in timings)
    mid = measure.median([measure.Timing(3.0, 1.0), measure.Timing(1.0, 5.0), measure.Timing(2.0, 3.0)])
    assert mid == measure.Timing(2.0, 3.0)  # wall and CPU medians each on their own
    out, t = measure.timed(lambda: 7, "cpu", cpu_clock=lambda: 0.0)
    assert out == 7 and t.cpu_s == 0.0 and t.wall_s >= 0
    assert measure.tree_cpu_seconds() >= time.process_time() - 1.0  # this process is in its own tree
    line = measure.machine(threads=1)
    assert measure.cpu_model() in line and "1 thread" in line and torch.__version__ in line


def test_benchmarks_are_modules_without_path_hacks():
    """Run as ``python -m benchmarks.<name>`` from the repository root; none edits sys.path to find the package."""
    for path in (ROOT / "benchmarks").rglob("*.py"):
        assert "sys.path" not in path.read_text(), path
    out = subprocess.run([sys.executable, "-m", "benchmarks.similarity", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0 and "python -m benchmarks.similarity" in out.stdout, out.stderr[-2000:]
