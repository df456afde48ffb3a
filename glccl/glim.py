"""GLIM, the Global-Local Interaction Module of GLCCL (arXiv 2605.17959), in its plain form.

GLIM pools a video's frames under the guidance of a text vector, with no parameters: the frames are weighted by a
softmax over their raw dot products with the query, at a fixed temperature (5 in the released code,
``JingXiaolun/GLCCL`` ``modules/modeling_glccl.py``, ``_get_text_guided_video_features``)::

    alpha_k = softmax_k(<q, f_k> / tau)        pooled = sum_k alpha_k f_k

The sentence gives the video feature v (global); every word position gives one word-guided feature u_t (local).

This is the readable form, used by the search first stage and by the test reference. The GLCCL head
(``glccl.heads.glccl``) computes the same scores without forming the pooled vectors, and is tested against it.

Variants (the release's ``aggregation_weights_type``; selected with the GLCCL head's ``glim`` hyperparameter):

- ``softmax``: the above (the released default);
- ``softmax_linear_softmax``: ``softmax_k([softmax(<q, f> / tau) P]_k / tau)`` with a learned ``K x K`` matrix P
  (``visual_logit_weight``, identity-initialised);
- ``mean``: no text guidance, the plain mean of the frames (the ablation "GLIM without text guidance"). The
  release's ``mlp_softmax`` variant also degenerates to this (its scale ``int(dim ** -0.5)`` is 0), so it is not
  offered separately.
"""

from __future__ import annotations

import torch
from torch import Tensor

GLIM_VARIANTS = ("softmax", "softmax_linear_softmax", "mean")


def masked_softmax(x: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over the True entries of ``mask`` (broadcast to ``x``); a row without any True entry gets the plain
    softmax over all entries (no NaN). ``mask=None``: the plain softmax."""
    if mask is None:
        return torch.softmax(x, dim)
    mask = mask.expand_as(x)
    keep = mask | ~mask.any(dim, keepdim=True)
    return torch.softmax(x.masked_fill(~keep, float("-inf")), dim)


def glim_weights(query: Tensor, frames: Tensor, frame_mask: Tensor | None = None, temperature: float = 5.0,
                 variant: str = "softmax", frame_weight: Tensor | None = None) -> Tensor:
    """Pooling weights of every query over every video's frames.

    Args:
        query: ``[Bt, Q, D]`` raw (unnormalised) text vectors: the sentence (``Q = 1``) or the words.
        frames: ``[Bv, K, D]`` raw frame features.
        frame_mask: ``[Bv, K]`` bool, or None (every frame takes part, as in the release).
        temperature: tau.
        variant: one of :data:`GLIM_VARIANTS`.
        frame_weight: ``[K, K]`` P, for ``softmax_linear_softmax``.
    Returns:
        ``[Bt, Bv, Q, K]`` weights, each row summing to 1 over the (valid) frames.
    """
    mask = None if frame_mask is None else frame_mask[None, :, None, :]
    logits = torch.einsum("tqd,vkd->tvqk", query, frames) / temperature
    if variant == "mean":
        return masked_softmax(torch.zeros_like(logits), mask)
    weights = masked_softmax(logits, mask)
    if variant == "softmax_linear_softmax":
        if frame_weight is None:
            raise ValueError("softmax_linear_softmax needs frame_weight [K, K]")
        k = frames.shape[1]
        weights = masked_softmax((weights @ frame_weight[:k, :k]) / temperature, mask)
    elif variant != "softmax":
        raise ValueError(f"unknown GLIM variant {variant!r} (one of {', '.join(GLIM_VARIANTS)})")
    return weights


def glim_pool(query: Tensor, frames: Tensor, frame_mask: Tensor | None = None, temperature: float = 5.0,
              variant: str = "softmax", frame_weight: Tensor | None = None) -> Tensor:
    """Text-guided pooled video features ``[Bt, Bv, Q, D]``: ``sum_k alpha_k f_k`` per (text, video, query).

    Padded frames (``frame_mask`` False) get zero weight; pass ``frame_mask=None`` for the release's behaviour, where
    they take part. Arguments as in :func:`glim_weights`.
    """
    weights = glim_weights(query, frames, frame_mask, temperature, variant, frame_weight)
    if frame_mask is not None:
        frames = frames.masked_fill(~frame_mask[..., None], 0.0)
    return torch.einsum("tvqk,vkd->tvqd", weights, frames)
