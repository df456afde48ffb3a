"""Training losses: symmetric InfoNCE, GLCCL's Contrastive Score Consistency (CSC) loss, and each head's own recipe.

Each system trains with its authors' loss (:meth:`glccl.heads.SimilarityHead.loss_terms`): GLCCL with InfoNCE +
eta * CSC (arXiv 2605.17959; ``JingXiaolun/GLCCL`` ``modeling_glccl.py``, ``var_loss``); X-CLIP, X-Pool and CLIP4Clip
with InfoNCE; GLSCL with InfoNCE + ICL + IDL; TC-MGC with InfoNCE + SDR (the last two are the head's
``aux_losses``). CSC on another multi-part head is an ablation (``csc=True``).
"""

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


def logit_scale_value(logit_scale: Tensor, logit_scale_max: float | None = None) -> Tensor:
    """λ = exp(logit_scale), clamped to ``logit_scale_max`` only when that is given.

    The released code clamps the parameter after the optimiser step and uses the unclamped λ in the loss, so the
    gradient on the logit scale is never forced to 0; a clamp here zeroes it whenever λ sits at the bound.
    """
    scale = logit_scale.exp()
    return scale if logit_scale_max is None else scale.clamp(max=logit_scale_max)


class RetrievalLoss(nn.Module):
    """``loss = InfoNCE(λ * score) [+ eta * CSC(parts)]``; the head's own terms are added by the engine.

    Args:
        eta: CSC weight.
        csc: include the CSC term. Build with :func:`build_loss` to get the head's own recipe.
        logit_scale_max: with ``clamp_in_loss``, the bound on λ inside the loss.
        clamp_in_loss: clamp λ inside the loss too (zero gradient on the logit scale at the bound); off by default,
            as in the release, which clamps only after the optimiser step.
    """

    def __init__(self, eta: float = 0.5, csc: bool = True, logit_scale_max: float = 100.0,
                 clamp_in_loss: bool = False):
        super().__init__()
        if eta < 0 or logit_scale_max <= 0:
            raise ValueError(f"need eta >= 0 and logit_scale_max > 0, got {eta}, {logit_scale_max}")
        self.eta, self.csc, self.logit_scale_max = float(eta), bool(csc), float(logit_scale_max)
        self.clamp_in_loss = bool(clamp_in_loss)

    @property
    def terms(self) -> tuple[str, ...]:
        return ("infonce", "csc") if self.csc else ("infonce",)

    def scale(self, logit_scale: Tensor) -> Tensor:
        """λ as this loss uses it."""
        return logit_scale_value(logit_scale, self.logit_scale_max if self.clamp_in_loss else None)

    def forward(self, score: Tensor, parts: Tensor, logit_scale: Tensor) -> dict[str, Tensor]:
        """Args: score ``[B, B]`` and parts ``[B, B, P]`` unscaled, logit_scale scalar (log of the scale).

        Returns ``loss`` and ``nce``, plus ``csc`` when the term is on (0 for a batch of one).
        """
        nce = info_nce(self.scale(logit_scale) * score)
        out = {"loss": nce, "nce": nce}
        if self.csc:
            if parts.shape[-1] < 2:
                raise ValueError(f"CSC needs two or more score parts, the head returns {parts.shape[-1]}")
            csc = csc_loss(parts) if parts.shape[0] >= 2 else nce.new_zeros(())
            out["csc"] = csc
            out["loss"] = nce + self.eta * csc
        return out


def build_loss(head, csc: bool | None = None, eta: float = 0.5, logit_scale_max: float = 100.0,
               clamp_in_loss: bool = False) -> RetrievalLoss:
    """The training loss of ``head`` (a :class:`~glccl.heads.SimilarityHead` instance or class).

    Args:
        csc: None for the authors' loss (CSC for GLCCL only); True adds CSC to another multi-part head (an ablation);
            False drops it from GLCCL (the ablation without CSC).
        eta, logit_scale_max, clamp_in_loss: see :class:`RetrievalLoss`.
    Raises:
        ValueError: CSC requested for a head with a single score part.
    """
    use_csc = "csc" in head.loss_terms(csc)
    if use_csc and len(head.part_names) < 2:
        raise ValueError(f"CSC needs two or more score parts; head {head.name!r} has {len(head.part_names)}")
    return RetrievalLoss(eta=eta, csc=use_csc, logit_scale_max=logit_scale_max, clamp_in_loss=clamp_in_loss)


def loss_recipe(head, loss: RetrievalLoss) -> str:
    """A readable recipe, e.g. ``infonce + 0.5*csc`` or ``infonce + sdr``, for logs and the MLflow record."""
    terms = ["infonce"] + ([f"{loss.eta:g}*csc"] if loss.csc else []) + list(head.aux_loss_names)
    return " + ".join(terms)


def loss_from_config(head, cfg) -> RetrievalLoss:
    """:func:`build_loss` from a :class:`glccl.config.LossConfig`."""
    return build_loss(head, csc=cfg.csc, eta=cfg.eta, logit_scale_max=cfg.logit_scale_max,
                      clamp_in_loss=cfg.clamp_in_loss)
