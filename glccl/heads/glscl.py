"""GLSCL similarity head: parameter-free global interaction + learnable-query local interaction.

``zchoi/GLSCL`` ``tvr/models/modeling.py`` (class ``DiCoSA``), for text i and video j, unscaled:

- **GIM** (no parameters): ``w_k = softmax_k(s_i . f_jk / tau) * m_jk`` (mask after the softmax, tau =
  ``temperature``, 5 by default), ``v_ij = sum_k w_k f_jk``, ``S^G_ij = cos(s_i, v_ij)``. The cosine ignores the
  scale of v, so this equals a masked softmax; it is computed that way (robust to whatever padded frames hold).
  Exact fast form: ``s . v = w . (F_j s)`` and ``||v||^2 = w^T Gram_j w`` with the per-video Gram matrix
  ``F_j F_j^T``, so no ``Bt x Bv x D`` tensor is formed; videos are processed in blocks of ``chunk_size``.
- **LIM**: ``num_queries`` = 8 learnable queries Q (uniform [0, 1) init) shared by both modalities
  (``query_share``), decoded by one 3-layer ``nn.TransformerDecoder`` shared by both (``cross_att_share``;
  post-norm, ReLU, ``max(1, D // 64)`` heads, FFN ``4 D`` (2048 at D = 512), dropout 0.1) against the video's frames
  and, separately, against the text's word features. Outputs ``c^v_j``, ``c^t_i`` ``[Nq, D]`` are L2-normalised;
  ``s^L_ij = (1 / Nq) sum_k <c^t_ik, c^v_jk>``.
- **score** = ``S^G + local_weight * s^L`` (``loss2_weight`` 0.5, training and evaluation alike);
  **parts** = ``[S^G, s^L]`` (P = 2). Note ``parts.mean(-1) != score`` for this head: the score weights the local
  part by 0.5, the parts are the two raw granularities (what a part-consistency loss such as CSC compares).
- **aux losses** on the paired global batch (text i with video i; code names swapped relative to the paper):
  ``icl`` (paper ICL, code ``Intra_Consistency``) = ``MSE(mean_b C^v, mean_b C^t) + beta * sum_k (M_kk - 0.75)^2``
  with ``M = (1 / Nq) sum_b C^v_b C^t_b^T`` and beta = 0.005 (README); ``idl`` (paper IDL, code
  ``Inter_Diversity``) = ``alpha * margin_ranking(mean_b C^v_b C^v_b^T, margin 0.1)`` (both directions, each
  normalised by ``Nq (Nq - 1)``), alpha = 1e-4, on the visual queries only.

Padding: the release masks the GIM weights with the frame mask and gives the shared query decoder no memory padding
mask (padded frames and padded word positions are attended to). ``mask_padding=False`` is exactly that;
``mask_padding=True`` (default) also masks padded frames and words in the decoder's cross-attention
(``memory_key_padding_mask``; a sample with no valid token attends to all of them). The release's word features come
from a key-padding-masked text encoder, which changes only the features at padded positions (see the README's table
of departures). The auxiliary losses re-run LIM on the global batch (the head keeps no state between ``forward`` and
``aux_losses``), so in training mode they see their own dropout sample.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SimilarityHead, effective_masks, register_head
from .meanp import unit
from .xclip import mask_bias


def _inv_norm(nsq: Tensor) -> Tensor:
    """``1 / sqrt(nsq)``, and 0 where ``nsq`` is 0."""
    tiny = torch.finfo(nsq.dtype).tiny
    return torch.where(nsq > tiny, nsq.clamp_min(tiny).rsqrt(), torch.zeros_like(nsq))


def margin_ranking(sim: Tensor, margin: float) -> Tensor:
    """GLSCL's ``margin_ranking_loss(direction='both')`` on a square matrix: every off-diagonal entry should sit
    ``margin`` below both diagonal entries of its row and column; each direction is averaged over ``n (n - 1)``."""
    n = sim.shape[0]
    d = sim.diagonal()
    off = ~torch.eye(n, dtype=torch.bool, device=sim.device)
    rows = (margin + sim - d[:, None]).clamp_min(0).masked_fill(~off, 0.0).sum()
    cols = (margin + sim - d[None, :]).clamp_min(0).masked_fill(~off, 0.0).sum()
    return (rows + cols) / max(n * (n - 1), 1)


@register_head("glscl")
class GLSCLHead(SimilarityHead):
    """GLSCL head (see the module docstring).

    Args:
        num_words, num_frames: informational.
        dim: feature width D.
        mask_padding: False masks the GIM only, like the release.
        temperature: GIM softmax temperature tau (GLSCL default 5; its scripts use 3).
        chunk_size: videos per GIM block.
        num_queries: LIM queries (8); decoder_layers: decoder depth (3); num_heads: decoder heads
            (default ``max(1, dim // 64)``); ffn_dim: decoder FFN width (default ``4 * dim``); dropout: decoder
            dropout (0.1).
        local_weight: weight of s^L in the score (0.5).
        icl_beta: ICL diagonal-term weight beta (0.005); icl_target: its target (0.75).
        idl_weight: IDL weight alpha (1e-4); idl_margin: its margin (0.1).
    """

    part_names = ("global", "local")
    aux_loss_names = ("icl", "idl")
    release = "zchoi/GLSCL tvr/models/modeling.py"

    def __init__(self, num_words: int, num_frames: int, dim: int, mask_padding: bool = True, temperature: float = 5.0,
                 chunk_size: int = 64, num_queries: int = 8, decoder_layers: int = 3, num_heads: int | None = None,
                 ffn_dim: int | None = None, dropout: float = 0.1, local_weight: float = 0.5, icl_beta: float = 0.005,
                 icl_target: float = 0.75, idl_weight: float = 1e-4, idl_margin: float = 0.1):
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.num_words, self.num_frames, self.dim = num_words, num_frames, dim
        self.temperature, self.chunk_size, self.mask_padding = float(temperature), chunk_size, mask_padding
        self.num_queries, self.local_weight = num_queries, float(local_weight)
        self.icl_beta, self.icl_target = float(icl_beta), float(icl_target)
        self.idl_weight, self.idl_margin = float(idl_weight), float(idl_margin)
        heads = num_heads or max(1, dim // 64)
        self.queries = nn.Parameter(torch.rand(num_queries, dim))
        layer = nn.TransformerDecoderLayer(dim, heads, dim_feedforward=ffn_dim or 4 * dim, dropout=dropout,
                                           batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers=decoder_layers)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, temperature={self.temperature}, num_queries={self.num_queries}, "
                f"local_weight={self.local_weight}, chunk_size={self.chunk_size}, mask_padding={self.mask_padding}")

    # -- public -------------------------------------------------------------------------------------------------------

    def forward(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Score ``S^G + local_weight * s^L`` ``[Bt, Bv]`` and parts ``[Bt, Bv, 2]`` = ``[S^G, s^L]``."""
        wm, fm = effective_masks(word_mask, frame_mask, self.mask_padding)
        s_g = self.global_scores(sentence, frames, frame_mask.bool())  # the release masks the GIM in both settings
        c_t, c_v = self.local_queries(words, wm, frames, fm)
        s_l = (c_t.flatten(1) @ c_v.flatten(1).T) / self.num_queries
        return s_g + self.local_weight * s_l, torch.stack([s_g, s_l], dim=-1)

    def global_scores(self, sentence: Tensor, frames: Tensor, fm: Tensor) -> Tensor:
        """GIM: ``S^G`` ``[Bt, Bv]`` (exact, via dot products with frames and the per-video Gram matrices)."""
        f0 = frames.masked_fill(~fm[..., None], 0.0)
        gram = f0 @ f0.transpose(1, 2)  # [Bv, K, K]
        fbias = mask_bias(fm, frames.dtype)
        s_inv = _inv_norm((sentence * sentence).sum(-1))[:, None]
        cols = []
        for j in range(0, frames.shape[0], self.chunk_size):
            sl = slice(j, j + self.chunk_size)
            a = torch.einsum("td,ckd->tck", sentence, f0[sl])  # s . f  [Bt, c, K]
            w = torch.softmax(a / self.temperature + fbias[None, sl], dim=-1) * fm[None, sl].to(a.dtype)
            nsq = (torch.einsum("tck,ckl->tcl", w, gram[sl]) * w).sum(-1)  # ||v||^2
            cols.append((w * a).sum(-1) * _inv_norm(nsq) * s_inv)
        return torch.cat(cols, dim=1)

    def local_queries(self, words: Tensor, wm: Tensor, frames: Tensor, fm: Tensor) -> tuple[Tensor, Tensor]:
        """LIM: normalised decoded queries ``c^t`` ``[Bt, Nq, D]`` and ``c^v`` ``[Bv, Nq, D]``."""
        return self._decode(words, wm), self._decode(frames, fm)

    def aux_losses(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor, frame_mask: Tensor,
                   scale: Tensor | None = None) -> dict[str, Tensor]:
        """``icl`` and ``idl`` on the paired global batch (``Bt == Bv``, text i describes video i)."""
        if words.shape[0] != frames.shape[0]:
            raise ValueError(f"paired batches need Bt == Bv, got {words.shape[0]} and {frames.shape[0]}")
        wm, fm = effective_masks(word_mask, frame_mask, self.mask_padding)
        c_t, c_v = self.local_queries(words, wm, frames, fm)
        b = c_v.shape[0]
        gram_v = torch.einsum("bkd,bld->kl", c_v, c_v) / b
        idl = self.idl_weight * margin_ranking(gram_v, self.idl_margin)
        cross = torch.einsum("bkd,bld->kl", c_v, c_t) / self.num_queries
        icl = (nn.functional.mse_loss(c_v.mean(0), c_t.mean(0))
               + self.icl_beta * (cross.diagonal() - self.icl_target).pow(2).sum())
        return {"icl": icl, "idl": idl}

    @staticmethod
    def flops(Bt: int, Bv: int, Nw: int, K: int, D: int) -> int:
        return glscl_flops(Bt, Bv, Nw, K, D)

    # -- internals ----------------------------------------------------------------------------------------------------

    def _decode(self, memory: Tensor, mask: Tensor) -> Tensor:
        pad = ~(mask | ~mask.any(-1, keepdim=True))  # samples with no valid token attend to all of them
        tgt = self.queries.to(memory.dtype).expand(memory.shape[0], -1, -1)
        return unit(self.decoder(tgt, memory, memory_key_padding_mask=pad))


def glscl_flops(Bt: int, Bv: int, Nw: int, K: int, D: int, num_queries: int = 8, decoder_layers: int = 3,
                ffn_mult: int = 4) -> int:
    """Similarity-stage FLOPs (2 per multiply-add; softmax, LayerNorm not counted).

    GIM: ``s . f`` per pair (``2 K D``), per-video Gram matrices, ``w^T Gram w`` and ``w . a`` per pair. LIM: the
    decoder once per video (memory K) and once per text (memory N_w), each layer = query self-attention (projections
    ``4 Nq D^2``, scores ``2 Nq^2 D``), cross-attention (query/out projections ``2 Nq D^2``, key/value projections
    ``2 L D^2``, scores ``2 Nq L D``) and the FFN (``2 ffn_mult Nq D^2``); then ``s^L`` per pair (``Nq D``).
    """
    pairs, q = Bt * Bv, num_queries
    gim = 2 * pairs * K * D + 2 * Bv * K * K * D + 2 * pairs * (K * K + 2 * K)

    def decoder(mem: int) -> int:
        per_layer = 2 * (4 * q * D * D + 2 * q * q * D + 2 * q * D * D + 2 * mem * D * D + 2 * q * mem * D
                         + 2 * ffn_mult * q * D * D)
        return decoder_layers * per_layer

    lim = Bv * decoder(K) + Bt * decoder(Nw) + 2 * pairs * q * D
    return gim + lim

