"""Training losses: symmetric InfoNCE and GLCCL's cross-granularity score consistency (CSC) loss (METHOD §1.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def info_nce(logits: Tensor) -> Tensor:
    """Symmetric InfoNCE: ``(CE(rows) + CE(columns)) / 2`` with the diagonal as target.

    Args:
        logits: ``[B, B]`` already scaled (text i x video j; pair i is positive).
    Returns: scalar.
    """
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"info_nce expects square [B, B] logits, got {tuple(logits.shape)}")
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def csc_loss(parts: Tensor) -> Tensor:
    """CSC: mean variance across the P scores on positive pairs / mean variance on negative pairs.

    The variance over P is the unbiased one (``torch.var``), as in the released code. The denominator is the true mean
    over the ``B (B - 1)`` off-diagonal pairs; the released code zeroes the diagonal and divides by ``B^2``, i.e. its
    loss is ours times ``B / (B - 1)`` (a constant factor at a fixed batch size). No epsilon: the ratio is invariant to
    any common rescaling of the scores, so it is also independent of the logit scale.

    Args:
        parts: ``[B, B, P]`` per-granularity scores, ``P >= 2``, ``B >= 2``.
    Returns: scalar.
    """
    if parts.ndim != 3 or parts.shape[0] != parts.shape[1]:
        raise ValueError(f"csc_loss expects [B, B, P] parts, got {tuple(parts.shape)}")
    b, p = parts.shape[0], parts.shape[2]
    if p < 2 or b < 2:
        raise ValueError(f"csc_loss needs P >= 2 scores and B >= 2 pairs, got P={p}, B={b}")
    var = parts.var(dim=-1, correction=1)  # [B, B]
    pos = var.diagonal()
    neg_mean = (var.sum() - pos.sum()) / (b * (b - 1))
    return pos.mean() / neg_mean


class RetrievalLoss(nn.Module):
    """``loss = InfoNCE(lambda * score) + eta * CSC(parts)`` with ``lambda = exp(logit_scale)`` clamped.

    CSC is skipped (reported as 0) when ``eta == 0``, when the head has a single part, or for a batch of one.
    """

    def __init__(self, eta: float = 0.5, logit_scale_max: float = 100.0):
        super().__init__()
        if eta < 0 or logit_scale_max <= 0:
            raise ValueError(f"need eta >= 0 and logit_scale_max > 0, got {eta}, {logit_scale_max}")
        self.eta, self.logit_scale_max = float(eta), float(logit_scale_max)

    def forward(self, score: Tensor, parts: Tensor, logit_scale: Tensor) -> dict[str, Tensor]:
        """Args: score ``[B, B]`` and parts ``[B, B, P]`` unscaled, logit_scale scalar (log of the scale)."""
        scale = logit_scale.exp().clamp(max=self.logit_scale_max)
        nce = info_nce(scale * score)
        if self.eta > 0 and parts.shape[-1] >= 2 and parts.shape[0] >= 2:
            csc = csc_loss(parts)
        else:
            csc = nce.new_zeros(())
        return {"loss": nce + self.eta * csc, "nce": nce, "csc": csc}
