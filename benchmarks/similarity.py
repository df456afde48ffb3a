"""Similarity-stage efficiency, side by side: fast GLCCL vs the naive (released-code) form vs the other heads.

    .venv/bin/python benchmarks/similarity.py                    # N=1000, MSR-VTT and DiDeMo shapes, CPU, + search
    .venv/bin/python benchmarks/similarity.py --quick            # N=256, smaller budgets (smoke run)
    .venv/bin/python benchmarks/similarity.py --device cuda      # fp32, TF32 and bf16 on a GPU
    .venv/bin/python benchmarks/similarity.py --methods glccl,glccl_naive,meanp,xpool --no-search --json out.json

What is measured, for N texts x N videos of random features (all words and frames valid, the worst case):

* **time**: wall seconds of the whole N x N similarity stage (``glccl.similarity.similarity_matrix`` over the head;
  the naive form is ``glccl_scores_naive_chunked`` on 64 x 64 blocks, like the released evaluation), median of
  ``--reps`` runs after a warm-up. A method whose full run would exceed its budget (``--max-run-s``; the fast GLCCL
  gets ``--max-run-s-glccl``) is timed on an ``m x m`` sub-problem (first m texts and videos) sized to the budget
  and extrapolated to N x N, linearly in the number of pairs plus a term linear in N for per-text/per-video work
  (``t(m) = alpha m + beta m^2`` fitted to the m x m median, one m/2 x m/2 run and a 32 x 32 probe): rows marked
  ``m/N *`` in the "timed" column.
* **cpu**: process CPU seconds of the same runs (wall ~ cpu / threads on an idle machine; wall >> cpu / threads means
  other processes were competing for the cores).
* **GFLOP**: the analytic count of the method's multiply-adds (2 per MAC; ``glccl_flops``, ``naive_glccl_flops``, the
  heads' ``*_flops``), at the full N x N; **floor** = FLOPs / the GEMM rate on the dominant product's shape
  ``[Bt (2 + 2 Nw), D] x [D, chunk K]`` (Bt = 32 texts, chunk = 64 videos: the fast GLCCL's blocks), measured in the
  method's own process right before its timed runs (the header also gives a dedicated measurement), so a machine
  shared with other jobs slows the floor and the method alike; **time/floor**; **cpu/cpu-floor**: the same in CPU
  seconds (GEMM rate per CPU-second), the view least disturbed by other load; **naive/x**: the naive form's time
  over this method's (how many times faster).
* **peak MB**: peak memory above the inputs, in a fresh subprocess per method: on CPU the growth of the resident set
  (``VmHWM`` reset through ``/proc/self/clear_refs`` after the timed runs, glibc told to trim and to mmap large
  blocks for this one run); on CUDA ``torch.cuda.max_memory_allocated``. Measured on the timed size; the fast
  GLCCL always gets one full N x N run for its peak (its single-run time is printed below the table as a check on
  the extrapolation).

Two-stage search (``--search``, MSR-VTT shape): videos are noisy copies of cluster centres and every text a noisy view
of one video, so rankings have structure. The exhaustive GLCCL ranking is compared with stage 1 (exact cosine top-S by
``meanp`` or global ``glim``) + GLCCL on the shortlist (``glccl.search``): shortlist recall@{1,5,10} against the
exhaustive top-k, ground-truth R@1 of both, and the speed-up.

Only the ``glccl`` library is needed (no Ray). Targets: fast GLCCL within 2x of its floor at the MSR-VTT
shape, >= 5x faster than the naive form on CPU, peak memory <= 2 GB for 1000 x 1000.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._machine import cpu_model  # noqa: E402

SHAPES = {"msrvtt": {"K": 12, "Nw": 32, "D": 512}, "didemo": {"K": 64, "Nw": 64, "D": 512}}
CORE_METHODS = ("glccl", "glccl_naive", "meanp", "xpool")
TEXT_CHUNK, VIDEO_CHUNK = 32, 64  # the fast GLCCL head's default blocks (GEMM shape for the rate)
NAIVE_BLOCK = 64  # the released evaluation's batch_size_val on MSR-VTT


# ---------------------------------------------------------------------------------------------------------------------
# machine, FLOPs, memory


def machine(device: str) -> str:
    s = (f"{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
         f"({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads")
    if device == "cuda" and torch.cuda.is_available():
        s += f"; GPU {torch.cuda.get_device_name()}"
    return s


def all_methods() -> list[str]:
    from glccl.heads import list_heads

    return list(CORE_METHODS) + [h for h in list_heads() if h not in CORE_METHODS]


def method_flops(method: str, n_t: int, n_v: int, K: int, Nw: int, D: int) -> int:
    """FLOPs of a method at these shapes: every head declares ``flops``; the naive GLCCL form has its own count."""
    from glccl.heads import get_head_class, naive_glccl_flops

    if method == "glccl_naive":
        return naive_glccl_flops(n_t, n_v, Nw, K, D)["total"]
    return int(get_head_class(method).flops(n_t, n_v, Nw, K, D))


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
        import ctypes

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


# ---------------------------------------------------------------------------------------------------------------------
# one measurement (run in a fresh subprocess by default)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _configure(device: str, dtype: str, threads: int | None) -> tuple[torch.device, torch.dtype]:
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but CUDA is not available")
        tf32 = dtype == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    elif dtype == "tf32":
        raise ValueError("tf32 is a CUDA mode")
    return dev, (torch.bfloat16 if dtype == "bf16" else torch.float32)


def gemm_rate(shape: dict, device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> tuple[float, float]:
    """FLOP/s of ``[Bt (2 + 2 Nw), D] x [D, chunk K]`` (B a transposed view, as frames are used), per wall second
    and per process-CPU second: medians over 7 groups of products."""
    K, Nw, D = shape["K"], shape["Nw"], shape["D"]
    a = torch.randn(TEXT_CHUNK * (2 + 2 * Nw), D, device=device, dtype=dtype)
    b = torch.randn(VIDEO_CHUNK * K, D, device=device, dtype=dtype).T
    flop = 2 * a.shape[0] * D * b.shape[1]
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    a @ b
    _sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    per_group = max(1, int(seconds / 7 / one))
    rates, cpu_rates = [], []
    for _ in range(7):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(per_group):
            a @ b
        _sync(device)
        rates.append(flop * per_group / (time.perf_counter() - t0))
        cpu_rates.append(flop * per_group / max(time.process_time() - c0, 1e-9))
    return statistics.median(rates), statistics.median(cpu_rates)


def make_features(n: int, shape: dict, device: torch.device, dtype: torch.dtype, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    K, Nw, D = shape["K"], shape["Nw"], shape["D"]
    text = {"sentence": torch.randn(n, D, generator=g), "words": torch.randn(n, Nw, D, generator=g),
            "word_mask": torch.ones(n, Nw, dtype=torch.bool)}
    video = {"frames": torch.randn(n, K, D, generator=g), "frame_mask": torch.ones(n, K, dtype=torch.bool)}
    cast = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in text.items()}
    castv = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in video.items()}
    return cast, castv


def scoring_fn(method: str, shape: dict, device: torch.device, dtype: torch.dtype):
    """``fn(text, video) -> scores`` for one method."""
    from glccl.heads import build_head, glccl_scores_naive_chunked
    from glccl.similarity import similarity_matrix

    K, Nw, D = shape["K"], shape["Nw"], shape["D"]
    head = build_head("glccl" if method == "glccl_naive" else method, num_words=Nw, num_frames=K, dim=D)
    head = head.to(device=device, dtype=dtype).eval()
    if method == "glccl_naive":
        def fn(text, video):
            return glccl_scores_naive_chunked(head, text["sentence"], text["words"], text["word_mask"],
                                              video["frames"], video["frame_mask"], NAIVE_BLOCK, NAIVE_BLOCK)[0]
        return fn

    def fn(text, video):
        return similarity_matrix(head, text, video)
    return fn


def fit_extrapolate(points: list[tuple[int, float]], n: int) -> tuple[float, float, float]:
    """Time of an ``n x n`` run from ``m x m`` runs ``[(m, t), ...]``, fitting ``t(m) = alpha m + beta m^2``.

    ``alpha m`` is the work per text and per video (encoding, projections, Gram matrices), ``beta m^2`` the work per
    pair. Least squares in relative error with ``alpha, beta >= 0``. Returns ``(t(n), alpha, beta)``.
    """
    m = torch.tensor([float(p[0]) for p in points], dtype=torch.float64)
    t = torch.tensor([float(p[1]) for p in points], dtype=torch.float64)
    w = 1.0 / t.clamp_min(1e-12)
    cols = torch.stack([m, m * m], dim=1) * w[:, None]
    y = torch.ones_like(t)  # (t_i * w_i)

    def one(col: int) -> tuple[float, float]:
        c = cols[:, col]
        v = float((c @ y) / (c @ c))
        return (v, 0.0) if col == 0 else (0.0, v)

    if len(points) >= 2 and len({p[0] for p in points}) >= 2:
        sol = torch.linalg.lstsq(cols, y[:, None]).solution[:, 0]
        alpha, beta = float(sol[0]), float(sol[1])
        if alpha < 0 or beta < 0:  # best fit on the boundary: one term only, the better of the two
            cands = [one(0), one(1)]
            alpha, beta = min(cands, key=lambda ab: float(((cols[:, 0] * ab[0] + cols[:, 1] * ab[1] - y) ** 2).sum()))
    else:
        alpha, beta = one(1)
    return alpha * n + beta * n * n, alpha, beta


@torch.no_grad()
def measure(method: str, shape_name: str | dict, n: int, device: str = "cpu", dtype: str = "fp32", reps: int = 3,
            max_run_s: float = 10.0, threads: int | None = None, rate_s: float = 1.0, full_memory: bool = False) -> dict:
    """Time, CPU time and peak memory of one method at one shape (a name of ``SHAPES`` or a ``{K, Nw, D}`` mapping;
    call it in a fresh process for clean memory).

    The full ``n x n`` problem is timed when a probe predicts it fits ``max_run_s``; otherwise an ``m x m`` sub-problem
    (first m texts, first m videos) sized to about ``max_run_s`` is timed, plus one ``m/2 x m/2`` run, and the time
    is extrapolated with :func:`fit_extrapolate` (per-pair work scales with the pairs, per-item work with N).
    ``full_memory``: peak memory from one extra run at the full ``n x n`` even then (its time is reported too).
    """
    dev, dt = _configure(device, dtype, threads)
    shape = SHAPES[shape_name] if isinstance(shape_name, str) else dict(shape_name)
    if not isinstance(shape_name, str):
        shape_name = f"K{shape['K']}-Nw{shape['Nw']}-D{shape['D']}"
    text, video = make_features(n, shape, dev, dt)
    fn = scoring_fn(method, shape, dev, dt)

    def run(m: int) -> tuple[float, float]:
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn({k: v[:m] for k, v in text.items()}, {k: v[:m] for k, v in video.items()})
        _sync(dev)
        t, c = time.perf_counter() - t0, time.process_time() - c0
        if not bool(torch.isfinite(out.float()).all()):
            raise FloatingPointError(f"{method}: non-finite scores")
        return t, c

    # Probes (also the warm-up of every code path) on two small squares, then choose the timed size.
    p1, p2 = min(n, 16), min(n, 32)
    t1, _ = run(p1)
    t2, _ = run(p2)
    est_full, a, b = fit_extrapolate([(p1, t1), (p2, t2)], n)
    if est_full <= max_run_s:
        m = n
    else:  # the largest m with a m + b m^2 <= budget
        m_fit = (-a + math.sqrt(a * a + 4 * b * max_run_s)) / (2 * b) if b > 0 else max_run_s / max(a, 1e-12)
        m = max(p2, min(n, int(m_fit) // 8 * 8))
    if m != p2:
        run(m)  # warm-up at the timed size
    rate, cpu_rate = gemm_rate(shape, dev, dt, seconds=rate_s)  # the machine's state around these runs
    walls, cpus = [], []
    for _ in range(reps):
        t, c = run(m)
        walls.append(t)
        cpus.append(c)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    fit = {}
    if m < n:
        half = max(1, m // 2)
        t_h, _ = run(half)
        wall_m = wall
        # the probe at p2 (warm by then) and the two timed sizes
        wall, a, b = fit_extrapolate([(p2, t2), (half, t_h), (m, wall_m)] if p2 < half else [(half, t_h), (m, wall_m)],
                                     n)
        cpu *= wall / wall_m  # CPU time scaled by the same factor
        fit = {"half": half, "half_wall_s": t_h, "alpha": a, "beta": b,
               "per_item_share": a * n / wall if wall > 0 else 0.0}
    # Peak memory last, so that its allocator settings cannot slow the timed runs: one run at the timed size (the
    # full size with full_memory), large blocks mmap'ed so the resident set follows the live memory.
    mem_at = n if full_memory else m
    malloc_for_measurement(dev)
    mem = PeakMemory(dev)
    mem.start()
    mem_run = run(mem_at)
    peak = mem.peak_bytes()
    full_run = mem_run if mem_at == n and m < n else None
    return {"method": method, "shape": shape_name, "n": n, "timed": m, "device": device, "dtype": dtype,
            "threads": torch.get_num_threads(), "wall_s": wall, "cpu_s": cpu, "wall_runs_s": walls,
            "extrapolated": m < n, "fit": fit, "peak_bytes": peak, "peak_at": mem_at,
            "full_run_s": full_run[0] if full_run else None, "rate_at_run": rate, "cpu_rate_at_run": cpu_rate,
            "flops": method_flops(method, n, n, **shape), "loadavg": os.getloadavg()[0]}


# ---------------------------------------------------------------------------------------------------------------------
# two-stage search


def structured_features(n: int, shape: dict, clusters: int = 40, seed: int = 0, scale: float = 8.0):
    """Videos = noisy copies of cluster centres (frames = noisy views of the video), text i = noisy view of video i.

    Features are ``scale`` x (unit signal + noise) (CLIP-like norms, so GLIM's ``/ 5`` softmax is peaked); the noise
    levels put MeanP's ground-truth R@1 near 50 % at N = 1000. Captions have 8..Nw valid words. Returns (text, video,
    text_to_video).
    """
    g = torch.Generator().manual_seed(seed)
    K, Nw, D = shape["K"], shape["Nw"], shape["D"]

    def unit(x):
        return x / x.norm(dim=-1, keepdim=True)

    centres = unit(torch.randn(clusters, D, generator=g))
    z = unit(centres[torch.randint(0, clusters, (n,), generator=g)] + 0.6 * unit(torch.randn(n, D, generator=g)))
    drift = torch.linspace(-1, 1, K)[None, :, None] * unit(torch.randn(n, 1, D, generator=g))  # motion over frames
    frames = scale * (z[:, None] + 0.5 * drift + 2.0 * unit(torch.randn(n, K, D, generator=g)))
    sentence = scale * (z + 4.0 * unit(torch.randn(n, D, generator=g)))
    words = scale * (z[:, None] + 4.0 * unit(torch.randn(n, Nw, D, generator=g)))
    lengths = torch.randint(8, Nw + 1, (n,), generator=g)
    word_mask = torch.arange(Nw)[None] < lengths[:, None]
    text = {"sentence": sentence, "words": words, "word_mask": word_mask}
    video = {"frames": frames, "frame_mask": torch.ones(n, K, dtype=torch.bool)}
    return text, video, torch.arange(n)


@torch.no_grad()
def measure_search(n: int, shortlists=(10, 50, 100), ks=(1, 5, 10), stage1s=("meanp", "glim"), reps: int = 3,
                   threads: int | None = None, device: str = "cpu") -> dict:
    """Shortlist recall and speed of two-stage search vs exhaustive GLCCL scoring (MSR-VTT shape)."""
    from glccl.heads import build_head
    from glccl.search import Gallery, _topk, rerank, shortlist_indices, shortlist_recall
    from glccl.similarity import similarity_matrix

    dev, _ = _configure(device, "fp32", threads)
    shape = SHAPES["msrvtt"]
    text, video, t2v = structured_features(n, shape)
    head = build_head("glccl", num_words=shape["Nw"], num_frames=shape["K"], dim=shape["D"]).to(dev).eval()
    text = {k: v.to(dev) for k, v in text.items()}
    gallery = Gallery(video["frames"].to(dev), video["frame_mask"].to(dev), [f"v{i}" for i in range(n)])
    kmax = min(max(ks), n)
    ks = tuple(k for k in ks if k <= n)

    def gt_r1(top1: torch.Tensor) -> float:
        return float((top1.cpu() == t2v).float().mean()) * 100

    # exhaustive: the whole N x N matrix with the head (as evaluation computes it), then top-k
    similarity_matrix(head, {k: v[:8] for k, v in text.items()}, video)  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    full = similarity_matrix(head, text, {"frames": gallery.frames, "frame_mask": gallery.frame_mask})
    ref_scores, ref = _topk(full, kmax)
    _sync(dev)
    t_ex = time.perf_counter() - t0
    rows = []
    for stage1 in stage1s:
        for s in shortlists:
            s = min(s, n)
            times, t1s = [], []
            for _ in range(reps):
                _sync(dev)
                t0 = time.perf_counter()
                cand = shortlist_indices(text["sentence"], gallery, s, stage1, head.temperature)
                _sync(dev)
                t1 = time.perf_counter() - t0
                scores, idx = rerank(head, text, gallery, cand, kmax, pair_fn=head.score_pairs)
                _sync(dev)
                times.append(time.perf_counter() - t0)
                t1s.append(t1)
            rec = shortlist_recall(cand.cpu(), ref.cpu(), ks)
            rows.append({"stage1": stage1, "shortlist": s, "recall": {str(k): v for k, v in rec.items()},
                         "time_s": statistics.median(times), "stage1_s": statistics.median(t1s),
                         "speedup": t_ex / statistics.median(times), "gt_r1": gt_r1(idx[:, 0]),
                         "pairs_frac": s / n})
    return {"n": n, "exhaustive_s": t_ex, "exhaustive_gt_r1": gt_r1(ref[:, 0]), "rows": rows,
            "threads": torch.get_num_threads(), "ks": list(ks)}


# ---------------------------------------------------------------------------------------------------------------------
# driver


def _worker_call(job: dict, inprocess: bool) -> dict:
    if inprocess:
        kind = job.pop("kind")
        if kind == "rate":
            dev, dt = _configure(job["device"], job["dtype"], job.get("threads"))
            rate, cpu_rate = gemm_rate(SHAPES[job["shape"]], dev, dt, seconds=job.get("seconds", 2.0))
            return {"rate": rate, "cpu_rate": cpu_rate, "threads": torch.get_num_threads()}
        return measure_search(**job) if kind == "search" else measure(**job)
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(job)]
    p = subprocess.run(cmd, capture_output=True, text=True)
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    report = {"machine": machine(args.device), "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
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


if __name__ == "__main__":
    sys.exit(main())
