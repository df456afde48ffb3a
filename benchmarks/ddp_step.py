"""Data-parallel training step: each rank scoring only its own texts (row blocks of the global score matrix, the
default) against every rank scoring the whole global matrix, side by side in one run.

    python -m benchmarks.ddp_step                          # 2 gloo processes, 1 thread each, the demo's model
    python -m benchmarks.ddp_step --world 4 --batch 128    # any world size / global batch
    python -m benchmarks.ddp_step --quick                  # fewer steps, for a smoke run

(from the repository root.)

Both modes give the same loss and gradients (tests/glccl/test_distributed.py checks it); they differ in the head's work per
rank: ``B/N x B`` pairs instead of ``B x B``. Each process is a plain ``torch.distributed`` gloo rank (no Ray), so
the numbers are the step itself. The two modes alternate in rounds, so drifting machine load hits both alike; the
table keeps each mode's median over rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from functools import partial

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.measure import machine, timed
from benchmarks.train_step import random_batch
from glccl import engine
from glccl.distributed import free_port
from glccl.losses import build_loss
from glccl.model import create_model
from glccl.optim import build_optimizer


def _rank(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    torch.manual_seed(0)
    model = create_model(args.preset, head=args.head, num_frames=args.frames, max_words=args.words,
                         freeze_token_embedding=True)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = build_optimizer(ddp, 1e-4, 1.0, 0.2)
    loss_fn = build_loss(model.head)
    torch.manual_seed(1 + rank)  # the same model on every rank, a different local batch
    batch = random_batch(model, args.batch // args.world, args.frames, args.words, torch.device("cpu"))

    def steps(shard: bool) -> None:
        for _ in range(args.steps):
            engine.train_step(ddp, loss_fn, batch, optimizer, shard_scores=shard)
        dist.barrier()  # a round ends when the slowest rank is done

    times: dict[str, list[float]] = {"rows": [], "full": []}
    for shard in (True, False):  # warm-up
        for _ in range(2):
            engine.train_step(ddp, loss_fn, batch, optimizer, shard_scores=shard)
    for _ in range(args.rounds):
        for name, shard in (("rows", True), ("full", False)):
            dist.barrier()  # every rank starts the round together
            _, t = timed(partial(steps, shard))
            times[name].append(t.wall_s / args.steps)
    if rank == 0:
        torch.save(times, out)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ddp_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny-rn-32")
    p.add_argument("--head", default="glccl")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--words", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--steps", type=int, default=10, help="steps per round and mode")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 3, 1
    if args.batch % args.world:
        p.error(f"--batch {args.batch} is not a multiple of --world {args.world}")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "times.pt")
        mp.start_processes(_rank, args=(args, free_port(), out), nprocs=args.world, join=True, start_method="spawn")
        times = torch.load(out)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {machine(threads=args.threads)} per rank; gloo, {args.world} ranks")
    print(f"model: {args.preset}, head {args.head}, global batch {args.batch}, K {args.frames}, Nw {args.words}; "
          f"{args.rounds} rounds x {args.steps} steps per mode, alternating\n")
    print("| scoring per rank | pairs scored per rank | s / step (median) | samples / s | rounds (s / step) |")
    print("|---|---|---|---|---|")
    rows = args.batch // args.world
    for name, pairs in (("own texts x all videos (default)", rows * args.batch),
                        ("whole global matrix", args.batch * args.batch)):
        key = "rows" if name.startswith("own") else "full"
        print(f"| {name} | {pairs} | {med[key]:.3f} | {args.batch / med[key]:.0f} | "
              f"{', '.join(f'{t:.3f}' for t in times[key])} |")
    print(f"\nspeed-up of row blocks: {med['full'] / med['rows']:.2f}x")


if __name__ == "__main__":
    main()
