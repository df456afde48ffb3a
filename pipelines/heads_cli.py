"""``glccl heads``: list the similarity heads with their parameter count and auxiliary losses."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="glccl heads", description=__doc__)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--num-words", type=int, default=32)
    p.add_argument("--num-frames", type=int, default=12)
    args = p.parse_args(argv)
    from glccl.heads import build_head, list_heads

    print(f"{'head':<10} {'params':>10}  {'parts':>5}  aux losses   (D={args.dim}, Nw={args.num_words}, K={args.num_frames})")
    for name in list_heads():
        head = build_head(name, num_words=args.num_words, num_frames=args.num_frames, dim=args.dim)
        n = sum(p.numel() for p in head.parameters())
        aux = ", ".join(getattr(head, "aux_loss_names", ())) or "-"
        print(f"{name:<10} {n:>10,}  {head.num_parts:>5}  {aux}")
    return 0
