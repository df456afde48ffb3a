"""CLIP4Clip mean-pooling head: cosine of the sentence feature and the masked mean of the frame features."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SimilarityHead, effective_masks, register_head


@register_head("meanp")
class MeanPHead(SimilarityHead):
    """Parameter-free: ``score[i, j] = cos(s_i, mean_k f_jk over valid k)``; parts ``[Bt, Bv, 1]``.

    ``temperature`` and ``chunk_size`` are accepted for a uniform head interface and ignored. A video with no valid
    frame has a zero mean feature and scores 0 (no NaN).
    """

    num_parts = 1
    uses_temporal = False  # CLIP4Clip meanP pools the CLIP frame features directly (seqtransf adds the transformer)

    def __init__(self, num_words: int, num_frames: int, dim: int, temperature: float | None = None,
                 chunk_size: int | None = None, mask_padding: bool = True):
        super().__init__()
        self.num_words, self.num_frames, self.dim = num_words, num_frames, dim
        self.mask_padding = mask_padding

    def forward(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        _, fm = effective_masks(word_mask, frame_mask, self.mask_padding)
        video = frames.masked_fill(~fm[..., None], 0.0).sum(1) / fm.sum(1, keepdim=True).clamp_min(1).to(frames.dtype)
        score = _unit(sentence) @ _unit(video).T
        return score, score[..., None]


def _unit(x: Tensor) -> Tensor:
    nsq = (x * x).sum(-1, keepdim=True)
    tiny = torch.finfo(x.dtype).tiny
    return x * torch.where(nsq > tiny, nsq.clamp_min(tiny).rsqrt(), torch.zeros_like(nsq))
