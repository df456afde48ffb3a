"""CLIP4Clip seqTransf head: temporal transformer + mean pooling.

In this model the temporal encoder (seqTransf, METHOD §1.1) runs before every head, so the head itself is the
parameter-free ``score[i, j] = cos(s_i, masked mean_k f_jk)`` over the temporally encoded frames. It differs from
``meanp`` (CLIP4Clip meanP) only in ``uses_temporal = True``: meanP is meant to pool the CLIP frame features without
the temporal transformer, and the model decides which frames a head sees from that attribute.
"""

from __future__ import annotations

from .base import register_head
from .meanp import MeanPHead


@register_head("seqtransf")
class SeqTransfHead(MeanPHead):
    """MeanP over the temporally encoded frames: ``score[i, j] = cos(s_i, mean of the valid f_jk)``; parts
    ``[Bt, Bv, 1]``. Parameter-free; a video without any valid frame scores 0."""

    uses_temporal = True


def seqtransf_flops(Bt: int, Bv: int, Nw: int, K: int, D: int) -> int:
    """Similarity-stage FLOPs (2 per multiply-add): the frame mean and the ``Bt x Bv`` cosine GEMM.

    The temporal transformer is part of the video encoder (shared by every head) and not counted.
    """
    return 2 * Bv * K * D + 2 * Bt * Bv * D


SeqTransfHead.flops = staticmethod(seqtransf_flops)
