"""The similarity benchmark's command line: runs each measurement in a fresh subprocess (clean peak memory), prints
the Markdown tables and the targets, and writes every number to ``--json``. Run it as ``python -m
benchmarks.similarity`` from the repository root (the package docstring says what is measured)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import benchmarks.similarity as package
from benchmarks.measure import machine
from benchmarks.similarity.search import measure_search
from benchmarks.similarity.stage import (
    CORE_METHODS,
    SHAPES,
    TEXT_CHUNK,
    VIDEO_CHUNK,
    all_methods,
    configure,
    gemm_rate,
    measure,
)

# The directory holding the benchmarks package: a worker started there imports the same code as this process.
_REPO_ROOT = Path(package.__file__).resolve().parents[2]


def _worker_call(job: dict, inprocess: bool) -> dict:
    if inprocess:
        kind = job.pop("kind")
        if kind == "rate":
            dev, dt = configure(job["device"], job["dtype"], job.get("threads"))
            rate, cpu_rate = gemm_rate(SHAPES[job["shape"]], dev, dt, seconds=job.get("seconds", 2.0))
            return {"rate": rate, "cpu_rate": cpu_rate, "threads": torch.get_num_threads()}
        return measure_search(**job) if kind == "search" else measure(**job)
    # a module run, like the command line's: the child finds the package the way the parent did
    cmd = [sys.executable, "-m", "benchmarks.similarity", "--_worker", json.dumps(job)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=_REPO_ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"worker {job} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _worker_main(spec: str) -> int:
    job = json.loads(spec)
    print(json.dumps(_worker_call(job, inprocess=True)))
    return 0


def fmt_bytes(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def similarity_table(results: list[dict], n: int) -> tuple[str, dict]:
    """Markdown table. floor = FLOPs / the GEMM rate measured in the method's own process right before its timed runs
    (so a busy machine slows both alike); cpu floor likewise with the rate per CPU-second."""
    naive = next((r for r in results if r["method"] == "glccl_naive"), None)
    head = ("| method | timed | time (s) | cpu (s) | GFLOP | floor (s) | time/floor | cpu/cpu-floor | naive/x | "
            "peak MB |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    derived = {}
    for r in results:
        floor = r["flops"] / r["rate_at_run"]
        ratio = r["wall_s"] / floor
        cpu_ratio = r["cpu_s"] / (r["flops"] / r["cpu_rate_at_run"])
        vs_naive = naive["wall_s"] / r["wall_s"] if naive else float("nan")
        timed = f"{r['timed']}/{n}" + (" *" if r["extrapolated"] else "")
        lines.append(f"| {r['method']} | {timed} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['flops'] / 1e9:,.1f} | "
                     f"{floor:.2f} | {ratio:.2f} | {cpu_ratio:.2f} | {vs_naive:.1f} | {fmt_bytes(r['peak_bytes'])} |")
        derived[r["method"]] = {"floor_s": floor, "time_over_floor": ratio, "cpu_over_cpu_floor": cpu_ratio,
                                "naive_over": vs_naive}
    return "\n".join(lines), derived


def search_table(s: dict) -> str:
    ks = s["ks"]
    lines = [f"exhaustive GLCCL over {s['n']} x {s['n']}: {s['exhaustive_s']:.2f} s, ground-truth R@1 "
             f"{s['exhaustive_gt_r1']:.1f}", "",
             "| stage 1 | shortlist | " + " | ".join(f"recall@{k}" for k in ks)
             + " | time (s) | of which stage 1 | speed-up | GT R@1 |",
             "|---|---|" + "---|" * len(ks) + "---|---|---|---|"]
    for r in s["rows"]:
        rec = " | ".join(f"{r['recall'][str(k)]:.3f}" for k in ks)
        lines.append(f"| {r['stage1']} | {r['shortlist']} | {rec} | {r['time_s']:.2f} | {r['stage1_s']:.3f} | "
                     f"{r['speedup']:.1f}x | {r['gt_r1']:.1f} |")
    return "\n".join(lines)


def targets(per_shape: dict, n: int, device: str, dtype: str) -> list[str]:
    out = []
    ms = per_shape.get("msrvtt")
    if not ms or "glccl" not in ms["derived"]:
        return out
    fast = next(r for r in ms["results"] if r["method"] == "glccl")
    d = ms["derived"]["glccl"]
    ok = d["time_over_floor"] <= 2.0
    out.append(f"- fast GLCCL within 2x of its floor at the MSR-VTT shape ({device} {dtype}): "
               f"{'MET' if ok else 'MISSED'}, time/floor = {d['time_over_floor']:.2f} (in CPU time: "
               f"{d['cpu_over_cpu_floor']:.2f})")
    if "glccl_naive" in ms["derived"] and device == "cpu":
        x = d["naive_over"]
        out.append(f"- >= 5x faster than the naive form on CPU: {'MET' if x >= 5 else 'MISSED'}, {x:.1f}x")
    gb = fast["peak_bytes"] / 1e9
    size = f"{n} x {n}" + ("" if fast["peak_at"] == n else f" (measured on {fast['peak_at']} x {fast['peak_at']})")
    out.append(f"- peak memory <= 2 GB for {size}: {'MET' if gb <= 2 else 'MISSED'}, {gb * 1000:.0f} MB above the inputs")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.similarity", description=package.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=None, help="texts = videos (default 1000; 256 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: N=256, 1 s budgets, 2 reps")
    p.add_argument("--shapes", default="msrvtt,didemo", help=f"comma-separated, of {list(SHAPES)}")
    p.add_argument("--methods", default="all",
                   help=f"comma-separated; 'core' = {','.join(CORE_METHODS)}; 'all' (default) adds every other head")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtypes", default=None, help="cpu: fp32 (default); cuda: fp32,tf32,bf16 (default)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    p.add_argument("--reps", type=int, default=None, help="timed runs per method (median; default 3, quick 2)")
    p.add_argument("--max-run-s", type=float, default=None,
                   help="longest full run before timing a sub-problem and extrapolating (default 5 s, quick 1 s)")
    p.add_argument("--max-run-s-glccl", type=float, default=None,
                   help="the same for the fast GLCCL (default 30 s, quick 5 s)")
    p.add_argument("--search", dest="search", action="store_true", default=True)
    p.add_argument("--no-search", dest="search", action="store_false")
    p.add_argument("--search-n", type=int, default=None, help="gallery size for the search part (default N)")
    p.add_argument("--inprocess", action="store_true", help="no subprocesses (peak memory is then less clean)")
    p.add_argument("--json", default=None, help="also write every number to this file")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        return _worker_main(args._worker)

    n = args.n or (256 if args.quick else 1000)
    reps = args.reps or (2 if args.quick else 3)
    max_run = args.max_run_s if args.max_run_s is not None else (1.0 if args.quick else 5.0)
    max_run_glccl = args.max_run_s_glccl if args.max_run_s_glccl is not None else (5.0 if args.quick else 30.0)
    rate_s = 0.3 if args.quick else 2.0
    dtypes = (args.dtypes or ("fp32,tf32,bf16" if args.device == "cuda" else "fp32")).split(",")
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for s in shapes:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; known: {list(SHAPES)}")
    if args.methods == "all":
        methods = all_methods()
    elif args.methods == "core":
        methods = list(CORE_METHODS)
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = all_methods()
    for m in methods:
        if m not in known:
            p.error(f"unknown method {m!r}; known: {known}")
    if args.threads:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    report = {"machine": machine(args.device), "command": " ".join(["python -m benchmarks.similarity"]
                                                                   + (argv or sys.argv[1:])),
              "n": n, "reps": reps, "max_run_s": max_run, "max_run_s_glccl": max_run_glccl, "tables": {}}
    print(f"# Similarity stage: {n} texts x {n} videos, D = 512, random features, all words/frames valid")
    print(f"machine: {report['machine']}; load average at start {os.getloadavg()[0]:.1f}")
    print(f"time = median of {reps} runs after a warm-up; methods whose full run would exceed {max_run:g} s "
          f"(fast GLCCL: {max_run_glccl:g} s) are timed on an m x m sub-problem and extrapolated "
          f"('*': linear in pairs plus a per-item term fitted from m and m/2)")
    all_ok_lines = []
    for dtype in dtypes:
        per_shape = {}
        for shape in shapes:
            sh = SHAPES[shape]
            rr = _worker_call({"kind": "rate", "shape": shape, "device": args.device, "dtype": dtype,
                               "threads": args.threads, "seconds": rate_s}, args.inprocess)
            rate, cpu_rate = rr["rate"], rr["cpu_rate"]
            results = []
            for m in methods:
                job = {"kind": "measure", "method": m, "shape_name": shape, "n": n, "device": args.device,
                       "dtype": dtype, "reps": reps, "max_run_s": max_run_glccl if m == "glccl" else max_run,
                       "threads": args.threads, "rate_s": rate_s / 2, "full_memory": m == "glccl"}
                r = _worker_call(job, args.inprocess)
                results.append(r)
                print(f"  [{dtype} {shape}] {m}: {r['wall_s']:.2f} s ({r['timed']} x {r['timed']} timed)",
                      file=sys.stderr, flush=True)
            table, derived = similarity_table(results, n)
            per_shape[shape] = {"rate": rate, "cpu_rate": cpu_rate, "results": results, "derived": derived,
                                "table": table}
            print(f"\n## {shape} shape (K = {sh['K']}, Nw = {sh['Nw']}), {args.device} {dtype}, "
                  f"{rr['threads']} threads: GEMM [{TEXT_CHUNK * (2 + 2 * sh['Nw'])}, {sh['D']}] x "
                  f"[{sh['D']}, {VIDEO_CHUNK * sh['K']}] at {rate / 1e9:.1f} GFLOP/s "
                  f"({cpu_rate / 1e9:.1f} per CPU-second); during the methods' runs "
                  f"{min(r['rate_at_run'] for r in results) / 1e9:.1f}-{max(r['rate_at_run'] for r in results) / 1e9:.1f}"
                  f" GFLOP/s (each row's floor uses its own)\n")
            print(table)
            for r in results:
                if r.get("full_run_s") is not None:
                    print(f"\n{r['method']}: one full {n} x {n} run took {r['full_run_s']:.2f} s (extrapolated from "
                          f"{r['timed']} x {r['timed']}: {r['wall_s']:.2f} s); peak memory measured on it")
        lines = targets(per_shape, n, args.device, dtype)
        all_ok_lines += lines
        if lines:
            print(f"\ntargets ({args.device} {dtype}):")
            print("\n".join(lines))
        report["tables"][dtype] = per_shape
    if args.search:
        sn = args.search_n or n
        print(f"\n# Two-stage search: {sn} queries over {sn} videos, MSR-VTT shape, structured random features, "
              f"GLCCL head (identity-initialised)\n")
        s = _worker_call({"kind": "search", "n": sn, "threads": args.threads, "device": args.device,
                          "reps": 1 if args.quick else 3}, args.inprocess)
        report["search"] = s
        print(search_table(s))
    report["targets"] = all_ok_lines
    report["elapsed_s"] = time.perf_counter() - t_start
    print(f"\n(total {report['elapsed_s']:.0f} s; load average at end {os.getloadavg()[0]:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))
    return 0
