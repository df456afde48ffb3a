"""CLIP4Clip mean-pooling head (``ArrowLuo/CLIP4Clip`` ``modules/modeling.py``, ``_loose_similarity`` with meanP).

``score[i, j] = cos(s_i, mean_k f_hat_jk)``: each frame feature is L2-normalised, the normalised frames are averaged
over the real frames (the release masks this mean with ``video_mask``), and the cosine with the sentence is taken.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SimilarityHead, register_head


def unit(x: Tensor) -> Tensor:
    """``x / ||x||`` over the last dim; an all-zero vector stays zero (no NaN, zero gradient)."""
    nsq = (x * x).sum(-1, keepdim=True)
    tiny = torch.finfo(x.dtype).tiny
    return x * torch.where(nsq > tiny, nsq.clamp_min(tiny).rsqrt(), torch.zeros_like(nsq))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of ``x`` ``[B, K, D]`` restricted to ``mask`` ``[B, K]`` (zero when nothing is valid), as the
    released ``_mean_pooling_for_similarity_visual``."""
    x = x.masked_fill(~mask[..., None], 0.0)
    return x.sum(1) / mask.sum(1, keepdim=True).clamp_min(1).to(x.dtype)


@register_head("meanp")
class MeanPHead(SimilarityHead):
    """Parameter-free: ``score[i, j] = cos(s_i, mean of the normalised valid f_jk)``; parts ``[Bt, Bv, 1]``.

    The release masks the frame mean, so ``mask_padding`` changes nothing here: both settings are the release. A
    video with no valid frame has a zero mean feature and scores 0 (no NaN). Words are not used.
    """

    part_names = ("video_sentence",)
    uses_temporal = False  # CLIP4Clip meanP pools the CLIP frame features directly (seqtransf adds the transformer)
    release = "ArrowLuo/CLIP4Clip modules/modeling.py (sim_header meanP)"

    def __init__(self, num_words: int, num_frames: int, dim: int, mask_padding: bool = True):
        super().__init__()
        self.num_words, self.num_frames, self.dim = num_words, num_frames, dim
        self.mask_padding = mask_padding

    def forward(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        video = unit(masked_mean(unit(frames), frame_mask.bool()))
        score = unit(sentence) @ video.T
        return score, score[..., None]

    @staticmethod
    def flops(Bt: int, Bv: int, Nw: int, K: int, D: int) -> int:
        """The frame normalisation and mean and the ``Bt x Bv`` cosine GEMM."""
        return 2 * Bv * K * D + 2 * Bt * Bv * D
