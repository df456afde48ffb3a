"""Measured performance of the library and the platform (the numbers are in BENCHMARKS.md; none of this is a test).

Each benchmark is a module run from the repository root::

    python -m benchmarks.similarity   # the N x N similarity stage of every head, and two-stage search
    python -m benchmarks.train_step   # samples/s of one optimiser step; data wait when Ray Data feeds it
    python -m benchmarks.ddp_step     # row-block vs whole-matrix scoring per data-parallel rank
    python -m benchmarks.decode       # decoding throughput: one process vs the Ray Data pipeline

They all measure through :mod:`benchmarks.measure` (machine line, synchronised wall and CPU timing, warm-up and
median of repeats, peak memory).
"""
