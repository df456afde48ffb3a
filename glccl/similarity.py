"""Text x video similarity over whole galleries, in blocks (evaluation, as the released ``_run_on_single_gpu``).

The released evaluation calls the head on 64 x 64 blocks of cached features and concatenates the blocks. Here the
blocks are larger (the GLCCL head bounds its own per-block memory through ``chunk_size`` / ``text_chunk``) and the
output is written into preallocated matrices, so peak memory is the result plus one block of work.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .heads.base import SimilarityHead


@torch.no_grad()
def similarity_matrix(head: SimilarityHead, text: dict[str, Tensor], video: dict[str, Tensor], text_chunk: int = 1024,
                      video_chunk: int = 1024, return_parts: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Unscaled scores of every text against every video.

    Args:
        head: a similarity head.
        text: ``sentence`` ``[Nt, D]``, ``words`` ``[Nt, Nw, D]``, ``word_mask`` ``[Nt, Nw]`` (other keys ignored).
        video: ``frames`` ``[Nv, K, D]``, ``frame_mask`` ``[Nv, K]`` (other keys ignored).
        text_chunk, video_chunk: block size in texts / videos.
        return_parts: also return the per-granularity parts.
    Returns:
        score ``[Nt, Nv]``, and parts ``[Nt, Nv, P]`` if ``return_parts``; on the features' device and dtype.
    """
    if text_chunk < 1 or video_chunk < 1:
        raise ValueError(f"text_chunk and video_chunk must be >= 1, got {text_chunk}, {video_chunk}")
    sentence, words, word_mask = text["sentence"], text["words"], text["word_mask"]
    frames, frame_mask = video["frames"], video["frame_mask"]
    nt, nv = sentence.shape[0], frames.shape[0]
    score = sentence.new_empty(nt, nv)
    parts = sentence.new_empty(nt, nv, head.num_parts) if return_parts else None
    for i in range(0, nt, text_chunk):
        ti = slice(i, i + text_chunk)
        for j in range(0, nv, video_chunk):
            vj = slice(j, j + video_chunk)
            s, p = head(sentence[ti], words[ti], word_mask[ti], frames[vj], frame_mask[vj])
            score[ti, vj] = s
            if parts is not None:
                parts[ti, vj] = p
    return (score, parts) if return_parts else score
