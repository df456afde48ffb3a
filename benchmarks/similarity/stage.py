"""Measuring the N x N similarity stage of one method: time, CPU time, analytic FLOPs, the GEMM-rate floor, peak
memory (see the package docstring for what each number means)."""

from __future__ import annotations

import math
import os
import statistics

import torch

from benchmarks.measure import PeakMemory, Timing, malloc_for_measurement, median, repeat, timed
from glccl.heads import build_head, get_head_class, glccl_scores_naive_chunked, list_heads, naive_glccl_flops
from glccl.similarity import similarity_matrix

SHAPES = {"msrvtt": {"K": 12, "Nw": 32, "D": 512}, "didemo": {"K": 64, "Nw": 64, "D": 512}}
CORE_METHODS = ("glccl", "glccl_naive", "meanp", "xpool")
TEXT_CHUNK, VIDEO_CHUNK = 32, 64  # the fast GLCCL head's default blocks (GEMM shape for the rate)
NAIVE_BLOCK = 64  # the released evaluation's batch_size_val on MSR-VTT


def all_methods() -> list[str]:
    """The core methods first, then every other registered head."""
    return list(CORE_METHODS) + [h for h in list_heads() if h not in CORE_METHODS]


def method_flops(method: str, n_t: int, n_v: int, K: int, Nw: int, D: int) -> int:
    """FLOPs of a method at these shapes: every head declares ``flops``; the naive GLCCL form has its own count."""
    if method == "glccl_naive":
        return naive_glccl_flops(n_t, n_v, Nw, K, D)["total"]
    return int(get_head_class(method).flops(n_t, n_v, Nw, K, D))


def configure(device: str, dtype: str, threads: int | None) -> tuple[torch.device, torch.dtype]:
    """Threads, device and matmul mode of one measurement; ``dtype`` is ``fp32``, ``tf32`` (CUDA only) or ``bf16``."""
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
    one = max(repeat(lambda: a @ b, 1, warmup=3, device=device)[0].wall_s, 1e-6)
    per_group = max(1, int(seconds / 7 / one))

    def group() -> None:
        for _ in range(per_group):
            a @ b

    groups = repeat(group, 7, device=device)
    rates = [flop * per_group / t.wall_s for t in groups]
    cpu_rates = [flop * per_group / max(t.cpu_s, 1e-9) for t in groups]
    return statistics.median(rates), statistics.median(cpu_rates)


def make_features(n: int, shape: dict, device: torch.device, dtype: torch.dtype, seed: int = 0) -> tuple[dict, dict]:
    """Random text and video features of ``n`` items each, every word and frame valid (the worst case)."""
    g = torch.Generator().manual_seed(seed)
    K, Nw, D = shape["K"], shape["Nw"], shape["D"]
    text = {"sentence": torch.randn(n, D, generator=g), "words": torch.randn(n, Nw, D, generator=g),
            "word_mask": torch.ones(n, Nw, dtype=torch.bool)}
    video = {"frames": torch.randn(n, K, D, generator=g), "frame_mask": torch.ones(n, K, dtype=torch.bool)}

    def cast(d: dict) -> dict:
        return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in d.items()}

    return cast(text), cast(video)


def scoring_fn(method: str, shape: dict, device: torch.device, dtype: torch.dtype):
    """``fn(text, video) -> scores`` for one method."""
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
    dev, dt = configure(device, dtype, threads)
    shape = SHAPES[shape_name] if isinstance(shape_name, str) else dict(shape_name)
    if not isinstance(shape_name, str):
        shape_name = f"K{shape['K']}-Nw{shape['Nw']}-D{shape['D']}"
    text, video = make_features(n, shape, dev, dt)
    fn = scoring_fn(method, shape, dev, dt)

    def run(m: int) -> Timing:
        out, t = timed(lambda: fn({k: v[:m] for k, v in text.items()}, {k: v[:m] for k, v in video.items()}), dev)
        if not bool(torch.isfinite(out.float()).all()):
            raise FloatingPointError(f"{method}: non-finite scores")
        return t

    # Probes (also the warm-up of every code path) on two small squares, then choose the timed size.
    p1, p2 = min(n, 16), min(n, 32)
    t1 = run(p1).wall_s
    t2 = run(p2).wall_s
    est_full, a, b = fit_extrapolate([(p1, t1), (p2, t2)], n)
    if est_full <= max_run_s:
        m = n
    else:  # the largest m with a m + b m^2 <= budget
        m_fit = (-a + math.sqrt(a * a + 4 * b * max_run_s)) / (2 * b) if b > 0 else max_run_s / max(a, 1e-12)
        m = max(p2, min(n, int(m_fit) // 8 * 8))
    if m != p2:
        run(m)  # warm-up at the timed size
    rate, cpu_rate = gemm_rate(shape, dev, dt, seconds=rate_s)  # the machine's state around these runs
    runs = [run(m) for _ in range(reps)]
    walls = [r.wall_s for r in runs]
    mid = median(runs)
    wall, cpu = mid.wall_s, mid.cpu_s
    fit = {}
    if m < n:
        half = max(1, m // 2)
        t_h = run(half).wall_s
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
            "full_run_s": full_run.wall_s if full_run else None, "rate_at_run": rate, "cpu_rate_at_run": cpu_rate,
            "flops": method_flops(method, n, n, **shape), "loadavg": os.getloadavg()[0]}
