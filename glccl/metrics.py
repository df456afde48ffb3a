"""Retrieval metrics from a text x video similarity matrix (the X-CLIP / TC-MGC ``metrics.py`` protocol).

Ranks are 0-based and tie-pessimistic: the rank of the correct item is the number of *other* candidates scoring at
least as high, so a constant matrix gives R@1 = 0. With several captions per video, text-to-video ranks each caption's
video among all videos, and video-to-text scores each video's captions as one candidate by their best caption:
``V[j, j'] = max_{c: video(c) = j'} sim[c, j]``, then ranks the diagonal of ``V``. Everything is exact and computed in
blocks (counting, no sort), so large matrices never need an ``Nt x Nv`` argsort.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def _inputs(sim: Tensor | np.ndarray, text_to_video: Tensor | np.ndarray | Sequence[int]) -> tuple[Tensor, Tensor]:
    s = torch.as_tensor(sim).detach().cpu()
    if not s.is_floating_point():
        s = s.double()
    t2v = torch.as_tensor(np.asarray(text_to_video) if not isinstance(text_to_video, Tensor) else text_to_video)
    t2v = t2v.detach().cpu().long().reshape(-1)
    if s.ndim != 2:
        raise ValueError(f"sim must be [Nt, Nv], got shape {tuple(s.shape)}")
    nt, nv = s.shape
    if t2v.numel() != nt:
        raise ValueError(f"text_to_video has {t2v.numel()} entries for {nt} texts")
    if nt and (int(t2v.min()) < 0 or int(t2v.max()) >= nv):
        raise ValueError(f"text_to_video values must lie in [0, {nv})")
    if torch.isnan(s).any():
        raise ValueError("sim contains NaN")
    missing = (torch.bincount(t2v, minlength=nv) == 0).nonzero().flatten()
    if missing.numel():
        raise ValueError(f"video {int(missing[0])} has no caption (video-to-text needs at least one per video; "
                         f"{missing.numel()} video(s) without captions)")
    return s, t2v


def retrieval_ranks(sim: Tensor | np.ndarray, text_to_video: Tensor | np.ndarray | Sequence[int],
                    block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the correct item: ``t2v`` ``[Nt]`` (one per caption) and ``v2t`` ``[Nv]`` (one per video).

    Args:
        sim: ``[Nt, Nv]`` similarities (tensor or ndarray; NaN rejected).
        text_to_video: ``[Nt]`` video index of each caption; every video needs at least one caption.
        block: rows / columns processed at once (memory ~ ``block * max(Nt, Nv)``).
    """
    s, t2v = _inputs(sim, text_to_video)
    nt, nv = s.shape
    t2v_ranks = torch.empty(nt, dtype=torch.long)
    for i in range(0, nt, block):
        rows = s[i:i + block]
        gt = rows.gather(1, t2v[i:i + block, None])
        t2v_ranks[i:i + block] = (rows >= gt).sum(1) - 1
    v2t_ranks = torch.empty(nv, dtype=torch.long)
    for j in range(0, nv, block):
        cols = s[:, j:j + block]  # [Nt, b]: caption scores for query videos j..j+b
        nb = cols.shape[1]
        best = torch.full((nv, nb), float("-inf"), dtype=s.dtype)  # best[j', q] = V[j + q, j']
        best.scatter_reduce_(0, t2v[:, None].expand(-1, nb), cols, reduce="amax", include_self=True)
        gt = best[torch.arange(j, j + nb), torch.arange(nb)]
        v2t_ranks[j:j + block] = (best >= gt[None]).sum(0) - 1
    return t2v_ranks.numpy(), v2t_ranks.numpy()


def _summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    out = {f"{prefix}/R@{k}": float(100.0 * np.mean(ranks < k)) for k in (1, 5, 10)}
    out[f"{prefix}/MdR"] = float(np.median(ranks) + 1)
    out[f"{prefix}/MnR"] = float(np.mean(ranks) + 1)
    return out


def retrieval_metrics(sim: Tensor | np.ndarray, text_to_video: Tensor | np.ndarray | Sequence[int]) -> dict[str, float]:
    """R@1/5/10 (percent), MdR and MnR (1-based) for text-to-video (``t2v/...``) and video-to-text (``v2t/...``).

    Args:
        sim: ``[Nt, Nv]`` similarities; text_to_video: ``[Nt]`` video index of each caption.
    """
    t2v, v2t = retrieval_ranks(sim, text_to_video)
    return {**_summary(t2v, "t2v"), **_summary(v2t, "v2t")}


def recall_at_k_curve(sim: Tensor | np.ndarray, text_to_video: Tensor | np.ndarray | Sequence[int],
                      ks: Sequence[int]) -> dict[str, list]:
    """Recall@k (percent) for every k in ``ks``: ``{"k": [...], "t2v": [...], "v2t": [...]}``."""
    t2v, v2t = retrieval_ranks(sim, text_to_video)
    ks = [int(k) for k in ks]
    return {"k": ks, "t2v": [float(100.0 * np.mean(t2v < k)) for k in ks],
            "v2t": [float(100.0 * np.mean(v2t < k)) for k in ks]}
