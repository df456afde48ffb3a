"""X-Pool similarity head: text-conditioned attention pooling of the frames (``layer6ai-labs/xpool``).

For text i and video j (original X-Pool ``modules/transformer.py``; one transformer block):

    s~ = LN1(s_i), f~_k = LN1(f_jk)                               (shared LN1)
    a_h = softmax_k( q_proj(s~)_h . k_proj(f~_k)_h / sqrt(D / H) )   (H heads; padded frames masked)
    o = out_proj( concat_h sum_k a_hk v_proj(f~_k)_h )
    o' = LN2(o);  pooled_ij = LN3( o' + Dropout(linear_proj(o')) )
    score[i, j] = cos(s_i, pooled_ij)                              (P = 1)

All linear layers are identity-initialised with zero bias, as in X-Pool (``_init_parameters``). X-Pool's defaults:
1 head, dropout 0.3.

Exact fast form: keys and values are projected once per video and queries once per text; because the attention
weights sum to one, ``out_proj`` is folded into the values (``out_proj(sum_k a_k v_k) = sum_k a_k W_out v_k + b``), so
per (text, video) pair only the attention (``H K D``), the pooling (``K D``) and ``linear_proj`` (``D^2``) remain.
Videos are processed in blocks of ``chunk_size`` (memory ``Bt x chunk x D``).

Masking: the released X-Pool has no frame mask (fixed frame counts); here padded frames get zero attention. A video
without any valid frame attends uniformly to all its frames (no NaN).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import SimilarityHead, effective_masks, register_head
from .meanp import unit
from .xclip import mask_bias


@register_head("xpool")
class XPoolHead(SimilarityHead):
    """X-Pool head.

    Args:
        num_words, num_frames: informational (no per-word or per-frame parameters).
        dim: feature width D.
        mask_padding: False ignores the frame mask, like the release (which has no frame mask).
        num_heads: attention heads H (X-Pool default 1); must divide ``dim``.
        dropout: dropout on ``linear_proj``'s output (X-Pool default 0.3).
        chunk_size: videos per block.
    """

    part_names = ("video_sentence",)
    release = "layer6ai-labs/xpool modules/transformer.py"

    def __init__(self, num_words: int, num_frames: int, dim: int, mask_padding: bool = True, num_heads: int = 1,
                 dropout: float = 0.3, chunk_size: int = 32):
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide dim={dim}")
        self.num_words, self.num_frames, self.dim = num_words, num_frames, dim
        self.chunk_size, self.mask_padding, self.num_heads = chunk_size, mask_padding, num_heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.linear_proj = nn.Linear(dim, dim)
        self.layer_norm1, self.layer_norm2, self.layer_norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj, self.linear_proj):
            nn.init.eye_(lin.weight)
            nn.init.zeros_(lin.bias)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, chunk_size={self.chunk_size}"

    def forward(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Score ``[Bt, Bv]`` and parts ``[Bt, Bv, 1]``."""
        _, fm = effective_masks(word_mask, frame_mask, self.mask_padding)
        bt, d = sentence.shape
        bv, k, _ = frames.shape
        h, e = self.num_heads, d // self.num_heads
        q = self.q_proj(self.layer_norm1(sentence)).view(bt, h, e) * (1.0 / math.sqrt(e))  # once per text
        f_ln = self.layer_norm1(frames)
        keys = self.k_proj(f_ln).view(bv, k, h, e)  # once per video
        vals = self.v_proj(f_ln).view(bv, k, h, e)
        # out_proj folded into the values: vo[j, h, k] = W_out[:, head h] v_jk,h  -> [Bv, H, K, D]
        vo = torch.einsum("vkhe,dhe->vhkd", vals, self.out_proj.weight.view(d, h, e))
        fbias = mask_bias(fm, q.dtype)  # [Bv, K]
        s_unit = unit(sentence)
        cols = []
        for j in range(0, bv, self.chunk_size):
            sl = slice(j, j + self.chunk_size)
            logits = torch.einsum("the,ckhe->tchk", q, keys[sl]) + fbias[None, sl, None, :]
            attn = torch.softmax(logits, dim=-1)  # [Bt, c, H, K]
            pooled = torch.einsum("tchk,chkd->tcd", attn, vo[sl]) + self.out_proj.bias
            o = self.layer_norm2(pooled)
            o = self.layer_norm3(o + self.dropout(self.linear_proj(o)))
            cols.append((unit(o) * s_unit[:, None, :]).sum(-1))
        score = torch.cat(cols, dim=1)
        return score, score[..., None]

    @staticmethod
    def flops(Bt: int, Bv: int, Nw: int, K: int, D: int) -> int:
        return xpool_flops(Bt, Bv, Nw, K, D)


def xpool_flops(Bt: int, Bv: int, Nw: int, K: int, D: int) -> int:
    """Similarity-stage FLOPs of this implementation (2 per multiply-add; LayerNorm/softmax not counted).

    ``q_proj`` per text; ``k_proj``, ``v_proj`` and the folded ``out_proj`` per frame; per pair the attention logits
    and pooling (``2 K D`` each), ``linear_proj`` (``D^2``) and the cosine. (The unfolded original applies
    ``out_proj`` per pair: another ``2 Bt Bv D^2``.)
    """
    pairs = Bt * Bv
    return 2 * Bt * D * D + 3 * 2 * Bv * K * D * D + pairs * (2 * 2 * K * D + 2 * D * D + 2 * D)

