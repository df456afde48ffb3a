"""X-CLIP similarity head: four multi-grained scores with AOSM aggregation and no text guidance.

X-CLIP (``xuguohai/X-CLIP`` ``modules/modeling_xclip.py`` ``_loose_similarity``), unscaled (the loss applies λ):

- frames are L2-normalised; the video feature is the masked mean of the normalised frames, normalised again;
- video-sentence ``S^VS = (s_hat G) . v_hat``;
- video-word ``S^VW = AOSM_words(w_hat_t . v_hat)`` (``word_logit_weight``, Nw x Nw);
- sentence-frame ``S^SF = AOSM_frames(s_hat . f_hat_k)`` (``frame_logit_weight``, K x K);
- frame-word: ``M[t, k] = (w_hat_t L) . f_hat_k`` per pair (Nw x K); ``word_level[k] = AOSM_words(M[:, k])``
  (``word_mat_weight``), ``frame_level[t] = AOSM_frames(M[t, :])`` (``frame_mat_weight``);
  ``S^FW = (AOSM_frames(word_level; frame_mat_weight2) + AOSM_words(frame_level; word_mat_weight2)) / 2``;
- score = the mean of the four parts.

``AOSM_W(x) = sum_n x_n [softmax(x / 0.01) W]_n`` with identity-initialised W.

Padding: the release masks only the video mean (``_mean_pooling_for_similarity_visual`` with ``video_mask``); padded
words and padded frames take part in every other softmax and sum. ``mask_padding=False`` is exactly that;
``mask_padding=True`` (default) also excludes padded words and frames from every AOSM softmax and sum.

One difference from the release remains: its frame-level scores use the CLIP frame features *before* the temporal
transformer (``use_original_clip_for_frame_features = True``); this head receives the post-temporal frames and uses
them for both the video mean and the frame-level scores (see the README's table of departures).

The module also holds the small masked-tensor helpers that the other baseline heads share (``mask_bias``, ``aosm``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SimilarityHead, effective_masks, register_head
from .meanp import masked_mean, unit

XCLIP_WEIGHT_NAMES = ("word_logit_weight", "frame_logit_weight", "word_mat_weight", "frame_mat_weight",
                      "word_mat_weight2", "frame_mat_weight2")


def mask_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive softmax bias (same shape as ``mask``): 0 where valid, -inf where padded; all-padded rows get 0."""
    keep = mask | ~mask.any(-1, keepdim=True)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~keep, float("-inf"))


def aosm(x: Tensor, weight: Tensor, mask: Tensor, inv_temp: float) -> Tensor:
    """X-CLIP's aggregator over the last dim, restricted to ``mask``: ``sum_n x_n [softmax(x * inv_temp) W]_n``.

    Args:
        x: ``[..., n]``; weight: ``[n, n]``; mask: bool, broadcastable to ``x`` (True = valid).
    Returns:
        ``[...]``; 0 where no entry is valid.
    """
    x = x.masked_fill(~mask, 0.0)
    p = torch.softmax(x * inv_temp + mask_bias(mask, x.dtype), dim=-1)
    return (x * (p @ weight)).sum(-1)


@register_head("xclip")
class XCLIPHead(SimilarityHead):
    """X-CLIP head. Parameters: G, L (``dim x dim``), three Nw x Nw and three K x K AOSM matrices, all identity.

    Args:
        num_words: Nw the word-axis matrices are built for (inputs may have fewer positions).
        num_frames: K the frame-axis matrices are built for (inputs may have fewer frames).
        dim: feature width D.
        mask_padding: False masks only the video mean, like the release.
        aosm_temperature: AOSM softmax temperature (0.01, hard-coded in X-CLIP).
        chunk_size: videos per block of the frame-word stage (bounds the ``Bt x chunk x Nw x K`` matrix).
    """

    part_names = ("video_sentence", "video_word", "sentence_frame", "frame_word")
    release = "xuguohai/X-CLIP modules/modeling_xclip.py"

    def __init__(self, num_words: int, num_frames: int, dim: int, mask_padding: bool = True,
                 aosm_temperature: float = 0.01, chunk_size: int = 64):
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.num_words, self.num_frames, self.dim = num_words, num_frames, dim
        self.chunk_size, self.mask_padding = chunk_size, mask_padding
        self.aosm_temperature = float(aosm_temperature)
        self.global_mat_weight = nn.Parameter(torch.eye(dim))
        self.local_mat_weight = nn.Parameter(torch.eye(dim))
        for n in XCLIP_WEIGHT_NAMES:
            setattr(self, n, nn.Parameter(torch.eye(num_words if n.startswith("word") else num_frames)))

    def extra_repr(self) -> str:
        return (f"num_words={self.num_words}, num_frames={self.num_frames}, dim={self.dim}, "
                f"chunk_size={self.chunk_size}, mask_padding={self.mask_padding}")

    def forward(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Scores ``[Bt, Bv]`` and parts ``[Bt, Bv, 4]`` (video-sentence, video-word, sentence-frame, frame-word)."""
        n, k = words.shape[1], frames.shape[1]
        if n > self.num_words or k > self.num_frames:
            raise ValueError(f"inputs have {n} words / {k} frames; the head was built for "
                             f"num_words={self.num_words}, num_frames={self.num_frames}")
        wm, fm = effective_masks(word_mask, frame_mask, self.mask_padding)
        inv = 1.0 / self.aosm_temperature
        ww = {name: getattr(self, name)[:n, :n] if name.startswith("word") else getattr(self, name)[:k, :k]
              for name in XCLIP_WEIGHT_NAMES}

        s = unit(sentence)  # [Bt, D]
        w = unit(words).masked_fill(~wm[..., None], 0.0)  # [Bt, n, D]
        f = unit(frames).masked_fill(~fm[..., None], 0.0)  # [Bv, K, D]
        v = unit(masked_mean(unit(frames), frame_mask.bool()))  # [Bv, D]: the release masks this mean

        s_vs = (s @ self.global_mat_weight) @ v.T
        x = torch.einsum("tnd,vd->tvn", w, v)
        s_vw = aosm(x, ww["word_logit_weight"], wm[:, None, :], inv)
        y = torch.einsum("td,vkd->tvk", s, f)
        s_sf = aosm(y, ww["frame_logit_weight"], fm[None], inv)

        wl = w @ self.local_mat_weight  # [Bt, n, D]; padded words stay 0
        wmask_t = wm[:, None, None, :]  # words of text i on the last axis
        cols = []
        for j in range(0, frames.shape[0], self.chunk_size):
            fc, fmc = f[j:j + self.chunk_size], fm[j:j + self.chunk_size]
            m = torch.einsum("tnd,ckd->tcnk", wl, fc)  # [Bt, c, n, K]
            word_level = aosm(m.transpose(-1, -2), ww["word_mat_weight"], wmask_t, inv)  # [Bt, c, K]
            frame_level = aosm(m, ww["frame_mat_weight"], fmc[None, :, None, :], inv)  # [Bt, c, n]
            s2f = aosm(word_level, ww["frame_mat_weight2"], fmc[None], inv)
            v2w = aosm(frame_level, ww["word_mat_weight2"], wm[:, None, :], inv)
            cols.append(0.5 * (s2f + v2w))
        s_fw = torch.cat(cols, dim=1)
        parts = torch.stack([s_vs, s_vw, s_sf, s_fw], dim=-1)
        return parts.mean(-1), parts

    @staticmethod
    def flops(Bt: int, Bv: int, Nw: int, K: int, D: int) -> int:
        return xclip_flops(Bt, Bv, Nw, K, D)


def xclip_flops(Bt: int, Bv: int, Nw: int, K: int, D: int) -> int:
    """Similarity-stage FLOPs (2 per multiply-add; softmax and other elementwise work not counted).

    Text projections (s_hat G, w_hat L), the video mean, the four score GEMMs (S^VS, x, y, M) and the AOSM products
    (``p W`` and the weighted sums) of every aggregation.
    """
    pairs = Bt * Bv
    text_proj = 2 * Bt * (1 + Nw) * D * D
    video_mean = 2 * Bv * K * D
    gemms = 2 * pairs * D * (1 + Nw + K + Nw * K)
    aosm_vw_sf = 2 * pairs * (Nw * Nw + Nw + K * K + K)
    aosm_fw = 2 * pairs * (K * (Nw * Nw + Nw) + Nw * (K * K + K) + (K * K + K) + (Nw * Nw + Nw))
    return text_proj + video_mean + gemms + aosm_vw_sf + aosm_fw

