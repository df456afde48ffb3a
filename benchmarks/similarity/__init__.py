"""Similarity-stage efficiency, side by side: fast GLCCL vs the naive (released-code) form vs the other heads.

    .venv/bin/python -m benchmarks.similarity                # N=1000, MSR-VTT and DiDeMo shapes, CPU, + search
    .venv/bin/python -m benchmarks.similarity --quick        # N=256, smaller budgets (smoke run)
    .venv/bin/python -m benchmarks.similarity --device cuda  # fp32, TF32 and bf16 on a GPU
    .venv/bin/python -m benchmarks.similarity --methods glccl,glccl_naive,meanp,xpool --no-search --json out.json

(from the repository root). The measuring lives in ``stage`` (one method at one shape: :func:`measure`) and ``search``
(:func:`measure_search`); ``cli`` runs them, each in a fresh subprocess, and prints the tables.

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

from benchmarks.similarity.search import measure_search, structured_features
from benchmarks.similarity.stage import (
    CORE_METHODS,
    SHAPES,
    all_methods,
    fit_extrapolate,
    gemm_rate,
    make_features,
    measure,
    method_flops,
    scoring_fn,
)

__all__ = ["CORE_METHODS", "SHAPES", "all_methods", "fit_extrapolate", "gemm_rate", "make_features", "measure",
           "measure_search", "method_flops", "scoring_fn", "structured_features"]
