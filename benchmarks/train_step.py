"""Training-step throughput: samples/s of one optimiser step for the tiny and vit-b-32 presets, and the share of step
time spent waiting for data when the step is fed by the Ray Data pipeline (decord decode in ``map_batches``).

    python -m benchmarks.train_step                      # CPU: compute-only steps, then the data-fed loop (tiny)
    python -m benchmarks.train_step --device cuda        # CUDA, bf16 autocast (needs only glccl + torch)
    python -m benchmarks.train_step --quick              # fewer steps, for a smoke run

(from the repository root.)

Compute-only steps use random uint8 frames and random tokens, so they measure the model, the GLCCL head and the
optimiser. The data-fed loop runs the same step on batches streamed from the synthetic benchmark's mp4 files and
reports time blocked in ``next(batch)`` over the loop's wall time.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from benchmarks.measure import machine, median, repeat
from glccl import engine
from glccl.config import DataConfig
from glccl.losses import build_loss
from glccl.model import create_model
from glccl.optim import build_optimizer
from pipelines import data as pdata
from pipelines.ray_session import connect
from pipelines.run_data import ensure_manifest


def random_batch(model, batch: int, frames: int, words: int, device) -> dict[str, torch.Tensor]:
    size = model.image_size
    tokens = torch.randint(1, 49000, (batch, words))
    tokens[:, 0], tokens[:, -1] = 49406, 49407
    return {"tokens": tokens.to(device),
            "frames": torch.randint(0, 256, (batch, frames, 3, size, size), dtype=torch.uint8, device=device),
            "frame_mask": torch.ones(batch, frames, dtype=torch.bool, device=device)}


def time_steps(preset: str, batch: int, steps: int, device: torch.device, head: str = "glccl", frames: int = 12,
               words: int = 32) -> dict[str, float]:
    torch.manual_seed(0)
    model = create_model(preset, head=head, num_frames=frames, max_words=words).to(device)
    opt = build_optimizer(model, lr=1e-4, coef_lr=1e-3, weight_decay=0.2)
    loss_fn = build_loss(model.head)
    b = random_batch(model, batch, frames, words, device)
    times = repeat(lambda: engine.train_step(model, loss_fn, b, opt, grad_clip=1.0, device=device), steps, warmup=2,
                   device=device)
    med = median(times).wall_s
    return {"step_s": med, "samples_per_s": batch / med,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def data_fed(batch: int, steps: int, root: str) -> dict[str, float]:
    """Tiny model trained in this process on batches streamed by Ray Data from the synthetic benchmark."""
    connect(None, num_cpus=os.cpu_count() or 2)
    manifest = ensure_manifest(DataConfig(dataset="synth", root=root), Path("runs") / "bench-train-step")
    model = create_model("tiny", num_frames=12, max_words=32)
    ds = pdata.video_dataset(manifest, "train", num_frames=12, size=model.image_size, train=True, max_words=32,
                             mode="pairs")
    opt = build_optimizer(model, lr=1e-4, coef_lr=1e-3, weight_decay=0.2)
    loss_fn = build_loss(model.head)
    it = iter(ds.iter_torch_batches(batch_size=batch, drop_last=True, dtypes=pdata.torch_dtypes("pairs")))
    next(it)  # pipeline start-up is not part of the steady state
    wait = 0.0
    t0 = time.perf_counter()
    done = 0
    for _ in range(steps):
        tw = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - tw
        engine.train_step(model, loss_fn, {k: b[k] for k in ("tokens", "frames", "frame_mask")}, opt)
        done += 1
    total = time.perf_counter() - t0
    return {"steps": done, "samples_per_s": done * batch / total, "data_wait_share": wait / total}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data-root", default="data/synth")
    p.add_argument("--skip-data", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    steps = 3 if args.quick else 8
    print(f"machine: {machine(device)}; device {device}" + (" (bf16 autocast)" if device.type == "cuda" else " (fp32)"))
    rows = [("tiny", 64, steps), ("vit-b-32", 8, max(2, steps // 3))]
    print(f"\n{'preset':<10}{'batch':>6}{'params (M)':>12}{'step (s)':>10}{'samples/s':>11}")
    for preset, batch, n in rows:
        r = time_steps(preset, batch, n, device)
        print(f"{preset:<10}{batch:>6}{r['params_m']:>12.1f}{r['step_s']:>10.3f}{r['samples_per_s']:>11.1f}")
    if not args.skip_data and device.type == "cpu":
        r = data_fed(32, 10 if args.quick else 40, args.data_root)
        print(f"\ndata-fed tiny loop (batch 32, Ray Data decode of data/synth, same process): {r['steps']} steps, "
              f"{r['samples_per_s']:.1f} samples/s, waiting for data {r['data_wait_share']:.0%} of the time")


if __name__ == "__main__":
    main()
