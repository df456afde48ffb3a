"""CLIP4Clip seqTransf head: temporal transformer + mean pooling.

In this model the temporal encoder (seqTransf, METHOD §1.1) runs before every head, so the head itself is the
parameter-free ``score[i, j] = cos(s_i, masked mean_k f_jk)`` over the temporally encoded frames. It differs from
``meanp`` (CLIP4Clip meanP) only in ``uses_temporal = True``: meanP is meant to pool the CLIP frame features without
the temporal transformer, and the model decides which frames a head sees from that attribute.
"""

from __future__ import annotations

from torch import Tensor

from .base import SimilarityHead, effective_masks, register_head
from .xclip import _masked_mean, unit


@register_head("seqtransf")
class SeqTransfHead(SimilarityHead):
    """Parameter-free: ``score[i, j] = cos(s_i, mean of the valid f_jk)``; parts ``[Bt, Bv, 1]``.

    ``temperature`` and ``chunk_size`` are accepted for a uniform head interface and ignored. A video without any valid
    frame has a zero mean feature and scores 0.
    """

    num_parts = 1
    uses_temporal = True

    def __init__(self, num_words: int, num_frames: int, dim: int, temperature: float | None = None,
                 chunk_size: int | None = None, mask_padding: bool = True):
        super().__init__()
        self.num_words, self.num_frames, self.dim = num_words, num_frames, dim
        self.mask_padding = mask_padding

    def forward(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        _, fm = effective_masks(word_mask, frame_mask, self.mask_padding)
        score = unit(sentence) @ unit(_masked_mean(frames, fm)).T
        return score, score[..., None]


def seqtransf_flops(Bt: int, Bv: int, Nw: int, K: int, D: int) -> int:
    """Similarity-stage FLOPs (2 per multiply-add): the frame mean and the ``Bt x Bv`` cosine GEMM.

    The temporal transformer is part of the video encoder (shared by every head) and not counted.
    """
    return 2 * Bv * K * D + 2 * Bt * Bv * D


SeqTransfHead.flops = staticmethod(seqtransf_flops)
