"""Blocked gallery similarity equals one direct head call."""

from __future__ import annotations

import pytest
import torch

from glccl.heads import GLCCLHead, MeanPHead
from glccl.similarity import similarity_matrix


def _data(g, nt, nv, nw=6, k=4, d=8):
    wm = torch.rand(nt, nw, generator=g) < 0.7
    wm[:, 0] = True
    fm = torch.rand(nv, k, generator=g) < 0.8
    fm[:, 0] = True
    text = {"sentence": torch.randn(nt, d, generator=g, dtype=torch.float64),
            "words": torch.randn(nt, nw, d, generator=g, dtype=torch.float64), "word_mask": wm, "ids": None}
    video = {"frames": torch.randn(nv, k, d, generator=g, dtype=torch.float64), "frame_mask": fm}
    return text, video


@pytest.mark.parametrize("seed", [0, 1, 2718])  # fixed: a failure reproduces; several: masks and values vary
@pytest.mark.parametrize("head_cls", [GLCCLHead, MeanPHead])
def test_blocked_equals_direct(head_cls, seed):
    g = torch.Generator().manual_seed(seed)
    text, video = _data(g, 11, 9)
    head = head_cls(num_words=6, num_frames=4, dim=8).double()
    if isinstance(head, GLCCLHead):
        head.chunk_size = 2
        with torch.no_grad():
            for p in head.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    with torch.no_grad():
        ref_score, ref_parts = head(text["sentence"], text["words"], text["word_mask"], video["frames"],
                                    video["frame_mask"])
    score, parts = similarity_matrix(head, text, video, text_chunk=4, video_chunk=5, return_parts=True)
    assert score.shape == (11, 9) and parts.shape == (11, 9, head.num_parts) and not score.requires_grad
    torch.testing.assert_close(score, ref_score, rtol=1e-10, atol=1e-12, msg=lambda m: f"seed={seed}: {m}")
    torch.testing.assert_close(parts, ref_parts, rtol=1e-10, atol=1e-12, msg=lambda m: f"seed={seed}: {m}")
    only = similarity_matrix(head, text, video)
    torch.testing.assert_close(only, ref_score, rtol=1e-10, atol=1e-12, msg=lambda m: f"seed={seed}: {m}")
    with pytest.raises(ValueError):
        similarity_matrix(head, text, video, text_chunk=0)
