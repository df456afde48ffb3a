"""``glccl heads``: every similarity head with its score parts, its default training loss, its parameter count and its
hyperparameters (``model.head_args``) with their defaults, the released code's values."""

from __future__ import annotations

import argparse

from glccl.heads import build_head, get_head_class, list_heads
from glccl.losses import build_loss, loss_recipe


def describe(name: str, dim: int, num_words: int, num_frames: int) -> list[str]:
    """Lines describing head ``name`` built at these sizes."""
    cls = get_head_class(name)
    head = build_head(name, num_words=num_words, num_frames=num_frames, dim=dim)
    n = sum(p.numel() for p in head.parameters())
    hps = ", ".join(f"{h.name}={h.default!r}" for h in cls.hyperparameters().values()) or "-"
    return [f"{name}  ({cls.release})",
            f"    parts:           {', '.join(cls.part_names)}",
            f"    default loss:    {loss_recipe(cls, build_loss(cls))}",
            f"    parameters:      {n:,}" + ("" if cls.uses_temporal else "  (no temporal encoder)"),
            f"    hyperparameters: {hps}"]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="glccl heads", description=__doc__)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--num-words", type=int, default=32)
    p.add_argument("--num-frames", type=int, default=12)
    args = p.parse_args(argv)

    print(f"similarity heads (D={args.dim}, Nw={args.num_words}, K={args.num_frames}); set hyperparameters with "
          "model.head_args.<name>=<value>, the loss with loss.csc / loss.eta")
    for name in list_heads():
        print("\n".join(describe(name, args.dim, args.num_words, args.num_frames)))
    return 0
