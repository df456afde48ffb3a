"""Text-to-video retrieval evaluation: the one function that training, ``glccl eval`` and the length study use.

Videos are encoded once (CLIP + temporal encoder), the texts once, and the head scores every text against every video
in blocks of ``video_chunk`` videos, so memory stays bounded at any gallery size. Under a process group (Ray Train)
each rank encodes its own shard of videos and its slice of the texts; features and score rows are gathered, so every
rank returns the same result. In one process the gathers are the identity.

    result = evaluate_retrieval(model, video_batches, tokens, text_to_video)
    result.metrics["t2v/R@1"], result.sim.shape   # [texts kept, videos]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from glccl import distributed as gdist
from glccl import engine
from glccl.metrics import retrieval_metrics
from glccl.similarity import similarity_matrix


@dataclass(frozen=True)
class RetrievalResult:
    metrics: dict[str, float]
    """t2v/v2t R@1, R@5, R@10, MdR, MnR, plus num_texts, num_videos and skipped_captions."""
    sim: Tensor
    """[texts kept, videos] scores; columns in ascending ``video_index``."""
    text_to_video: Tensor
    """Column of each kept text's video."""
    video_index: Tensor
    """Manifest index of each column's video."""
    keep: Tensor
    """Which of the given texts were scored: a text whose video was skipped as bad input has no column."""


def evaluate_retrieval(model: nn.Module, video_batches: Iterable[dict[str, Tensor]], tokens: Tensor,
                       text_to_video: Tensor, *, batch_size: int = 64, video_chunk: int = 64,
                       device: torch.device | None = None) -> RetrievalResult:
    """Score ``tokens`` (every text of the split, ``[N, Nw]``) against the videos of ``video_batches`` (dicts with
    frames, frame_mask, video_index: this rank's shard under a process group) and compute the retrieval metrics.

    ``text_to_video[i]`` is the ``video_index`` of text i's video. Texts whose video is in no batch (skipped as bad
    input) are left out and counted in ``skipped_captions``.
    """
    core = engine.unwrap(model)
    device = device or next(core.parameters()).device
    vids = engine.encode_videos(core, video_batches, device=device)
    frames = gdist.gather_no_grad(vids["frames"].to(device)).cpu()
    fmask = gdist.gather_no_grad(vids["frame_mask"].to(torch.uint8).to(device)).cpu().bool()
    vindex = gdist.gather_no_grad(vids["video_index"].to(device)).cpu()
    order = torch.argsort(vindex)
    frames, fmask, vindex = frames[order], fmask[order], vindex[order]

    tokens = torch.as_tensor(tokens)
    t2v_global = torch.as_tensor(text_to_video)
    column = {int(v): i for i, v in enumerate(vindex.tolist())}
    keep = torch.tensor([int(v) in column for v in t2v_global.tolist()], dtype=torch.bool)
    tokens, t2v_global = tokens[keep], t2v_global[keep]
    t2v = torch.tensor([column[int(v)] for v in t2v_global.tolist()], dtype=torch.long)

    world, rank = gdist.world_size(), gdist.rank()
    lo, hi = (tokens.shape[0] * rank) // world, (tokens.shape[0] * (rank + 1)) // world
    tfeat = engine.encode_texts(core, tokens[lo:hi], batch_size=batch_size, device=device)
    with torch.no_grad():
        rows = similarity_matrix(core.head, {k: v.to(device) for k, v in tfeat.items()},
                                 {"frames": frames.to(device), "frame_mask": fmask.to(device)},
                                 video_chunk=video_chunk)
    sim = gdist.gather_no_grad(rows.float()).cpu()
    metrics = retrieval_metrics(sim, t2v)
    metrics["num_texts"] = float(sim.shape[0])
    metrics["num_videos"] = float(sim.shape[1])
    metrics["skipped_captions"] = float((~keep).sum())
    return RetrievalResult(metrics=metrics, sim=sim, text_to_video=t2v, video_index=vindex, keep=keep)
