"""TC-MGC similarity head: language-video attention + four scores with SR / ISA + LSA fusion.

For text i and video j (``JingXiaolun/TC-MGC`` ``modules/modeling_tcmgc.py``, ``modules/module_xpool.py``):

- **LVA** (language-video attention; X-Pool's block with the q/k/v/out projections bypassed, as in the released
  forward): for a query q (the sentence, or one word) ``q~ = LN1(q)``, ``f~ = LN1(f)``,
  ``a = softmax_k(q~ . f~_k / sqrt(D / H))``, ``o = LN2(sum_k a_k f~_k)``, ``out = LN3(o + Dropout(Linear(o)))``
  with ``Linear`` = ``linear_proj``. The sentence gives the video feature ``v_ij``, word t gives ``u_ij,t``;
  both are L2-normalised.
- **Scores** on normalised features (unscaled; the loss applies λ), with ``n_a = max(1, int(num_words * keep_rate))``
  and ISA ``(x; W) = sum_n x_n softmax(λ_s [softmax(λ_s x) W])_n``, λ_s = ``softmax_lambda`` = 100:
  1. video-sentence ``(s_hat G) . v_hat``;
  2. video-word (SR-a): top-n_a of ``x_t = w_hat_t . v_hat``, then ISA (n_a x n_a W);
  3. sentence-frame (SR-b): ``y_t = s_hat . u_hat_t``; top-n_a kept, the rest fused into one value
     ``sum softmax(y_rest) y_rest``, concatenated (length n_a + 1), ISA ((n_a + 1)^2 W);
  4. frame-word (Bi-SR + Bi-ISA): ``M[t, u] = (w_hat_t L) . u_hat_u``; for every column u keep its top-n_a values
     (sorted, row r = the r-th largest), then for every kept row its top-n_a values -> an n_a x n_a matrix; ISA over
     rows (``attentive_word_mat_weight``) and over columns (``attentive_frame_word_mat_weight``), a second ISA on each
     result (``..._weight2``), and the mean of the two directions.
- **LSA**: ``omega = softmax_k(lsa_scale * [S^1..S^4] W_LSA)``, ``score = sum_k omega_k S^k``; parts = the four scores.
- **SDR** (aux loss ``sdr``): ``sdr_weight * mean_i Var_k(lambda S^k_ii)`` (unbiased variance) over the positive
  (diagonal) pairs of the global batch, on the scores scaled by the logit scale λ as in the release (``sdr_scale``
  replaces λ by a constant).

Choices where the released code is incomplete or depends on λ:

- ``logit_weight`` (LSA) is referenced but never defined in the released code: it is a learnable 4 x 4 matrix,
  identity-initialised; ``frame_features_conversion_flag`` is taken as False (the word-guided features stay N_w long).
- The released scores already contain λ = exp(logit_scale) when LSA's softmax and SDR's variance are computed. The
  scores a head returns are unscaled, so LSA takes an explicit ``lsa_scale`` (default 100: λ at initialisation and
  at its clamp, where λ * score equals the released logits exactly). SDR gets λ from the loss (``aux_losses``'s
  ``scale``), as in the release.
- ``linear_proj``: ``module_xpool.py`` sets it to the identity, but ``modeling_tcmgc.py`` then re-initialises every
  ``nn.Linear`` from N(0, 0.02) with zero bias (``self.apply(self.init_weights)``), which is where the release
  starts training; ``linear_proj_init="identity"`` keeps the identity instead.
- ``n_a`` is fixed from ``num_words`` at construction (the parameter sizes) and at least 1; inputs with fewer word
  positions use ``min(n_a, N_w)`` and the leading block of each matrix.
- Padding: the release masks nothing (``mask_padding=False``). With ``mask_padding=True`` (default) padded frames get
  zero LVA attention; padded words are never selected by SR, never fused, and excluded from every ISA. A text with
  fewer than n_a valid words uses only its valid slots.
- The stored code runs LVA twice per query and discards the first result; here it runs once.
- LVA's temperature is the scaled dot product ``1 / sqrt(D / H)`` as in the code.

Cost: LVA produces ``Bt x Bv x (1 + N_w)`` pooled D-vectors and applies a D x D linear layer to each, so the head is
computed in ``text_chunk x chunk_size`` blocks (peak memory ``text_chunk * chunk_size * (1 + N_w) * D`` per tensor).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import SimilarityHead, effective_masks, register_head
from .meanp import unit
from .xclip import mask_bias

NEG_INF = float("-inf")
ISA_WEIGHT_NAMES = ("attentive_word_logit_weight", "attentive_word_mat_weight", "attentive_word_mat_weight2",
                    "attentive_frame_word_mat_weight", "attentive_frame_word_mat_weight2")


def isa(x: Tensor, weight: Tensor, mask: Tensor, lam: float) -> Tensor:
    """Softmax-linear-softmax aggregation over the last dim, restricted to ``mask``.

    ``sum_n x_n softmax(lam [softmax(lam x) W])_n`` with padded entries excluded from both softmaxes and the sum.

    Args:
        x: ``[..., n]`` (padded entries may hold anything, -inf included); weight ``[n, n]``; mask bool, same shape.
    Returns:
        ``[...]``; 0 where no entry is valid.
    """
    x = x.masked_fill(~mask, 0.0)
    bias = mask_bias(mask, x.dtype)
    p = torch.softmax(x * lam + bias, dim=-1)
    q = torch.softmax((p @ weight) * lam + bias, dim=-1)
    return (x * q).sum(-1)


@register_head("tcmgc")
class TCMGCHead(SimilarityHead):
    """TC-MGC head (see the module docstring).

    Args:
        num_words: N_w; fixes ``n_a = max(1, int(num_words * keep_rate))`` and the ISA matrix sizes.
        num_frames: informational (LVA works with any K).
        dim: feature width D.
        mask_padding: False ignores both masks (the released behaviour).
        keep_rate: SR keep rate (0.1 in the code: 3 of 32 words).
        softmax_lambda: ISA inverse temperature λ_s (100).
        num_heads: LVA heads (1); must divide ``dim``.
        dropout: LVA dropout (0.3).
        linear_proj_init: ``normal`` (N(0, 0.02), zero bias: where the release starts) or ``identity``.
        lsa_scale: scale of the scores inside LSA's softmax (stands in for λ; 100).
        sdr_weight: SDR loss weight (0.5).
        sdr_scale: scale of the scores inside SDR's variance; None (default) uses λ as the release does.
        chunk_size: videos per block; text_chunk: texts per block.
    """

    part_names = ("video_sentence", "video_word", "sentence_frame", "frame_word")
    aux_loss_names = ("sdr",)
    release = "JingXiaolun/TC-MGC modules/modeling_tcmgc.py, modules/module_xpool.py"

    def __init__(self, num_words: int, num_frames: int, dim: int, mask_padding: bool = True, keep_rate: float = 0.1,
                 softmax_lambda: float = 100.0, num_heads: int = 1, dropout: float = 0.3,
                 linear_proj_init: str = "normal", lsa_scale: float = 100.0, sdr_weight: float = 0.5,
                 sdr_scale: float | None = None, chunk_size: int = 16, text_chunk: int = 64):
        super().__init__()
        if chunk_size < 1 or text_chunk < 1:
            raise ValueError(f"chunk_size and text_chunk must be >= 1, got {chunk_size}, {text_chunk}")
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide dim={dim}")
        if linear_proj_init not in ("normal", "identity"):
            raise ValueError(f"linear_proj_init must be 'normal' or 'identity', got {linear_proj_init!r}")
        self.num_words, self.num_frames, self.dim = num_words, num_frames, dim
        self.chunk_size, self.text_chunk, self.mask_padding = chunk_size, text_chunk, mask_padding
        self.keep_rate, self.softmax_lambda, self.num_heads = keep_rate, float(softmax_lambda), num_heads
        self.lsa_scale, self.sdr_weight = float(lsa_scale), float(sdr_weight)
        self.sdr_scale = None if sdr_scale is None else float(sdr_scale)
        self.n_keep = max(1, int(num_words * keep_rate))
        # LVA
        self.layer_norm1, self.layer_norm2, self.layer_norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.linear_proj = nn.Linear(dim, dim)
        if linear_proj_init == "identity":
            nn.init.eye_(self.linear_proj.weight)
        else:
            nn.init.normal_(self.linear_proj.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.linear_proj.bias)
        self.dropout = nn.Dropout(dropout)
        # scores, ISA and LSA
        self.global_mat_weight = nn.Parameter(torch.eye(dim))
        self.local_mat_weight = nn.Parameter(torch.eye(dim))
        for name in ISA_WEIGHT_NAMES:
            setattr(self, name, nn.Parameter(torch.eye(self.n_keep)))
        self.concat_frame_word_logit_weight = nn.Parameter(torch.eye(self.n_keep + 1))
        self.logit_weight = nn.Parameter(torch.eye(4))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, n_keep={self.n_keep}, num_heads={self.num_heads}, lsa_scale={self.lsa_scale}, "
                f"chunk_size={self.chunk_size}, text_chunk={self.text_chunk}, mask_padding={self.mask_padding}")

    # -- public -------------------------------------------------------------------------------------------------------

    def forward(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """LSA-fused score ``[Bt, Bv]`` and parts ``[Bt, Bv, 4]`` (video-sentence, video-word, sentence-frame,
        frame-word), all unscaled."""
        wm, fm = effective_masks(word_mask, frame_mask, self.mask_padding)
        text = self._text(sentence, words, wm)
        f_ln, fbias = self.layer_norm1(frames), mask_bias(fm, frames.dtype)
        rows = []
        for i in range(0, sentence.shape[0], self.text_chunk):
            t = tuple(x[i:i + self.text_chunk] for x in text)
            rows.append(torch.cat([self._block(*t, f_ln[j:j + self.chunk_size], fbias[j:j + self.chunk_size], False)
                                   for j in range(0, frames.shape[0], self.chunk_size)], dim=1))
        parts = torch.cat(rows, dim=0)
        return self.fuse(parts), parts

    def fuse(self, parts: Tensor) -> Tensor:
        """LSA: ``sum_k softmax_k(lsa_scale * parts W_LSA)_k parts_k``; parts ``[..., 4]`` -> ``[...]``."""
        w = torch.softmax((parts * self.lsa_scale) @ self.logit_weight, dim=-1)
        return (w * parts).sum(-1)

    def diagonal_parts(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                       frame_mask: Tensor) -> Tensor:
        """Parts ``[B, 4]`` of the pairs (text i, video i) only (``Bt == Bv == B``), without the other pairs."""
        if sentence.shape[0] != frames.shape[0]:
            raise ValueError(f"paired batches need Bt == Bv, got {sentence.shape[0]} and {frames.shape[0]}")
        wm, fm = effective_masks(word_mask, frame_mask, self.mask_padding)
        text = self._text(sentence, words, wm)
        f_ln, fbias = self.layer_norm1(frames), mask_bias(fm, frames.dtype)
        c = self.text_chunk
        out = [self._block(*(x[i:i + c] for x in text), f_ln[i:i + c], fbias[i:i + c], True)[:, 0]
               for i in range(0, sentence.shape[0], c)]
        return torch.cat(out, dim=0)

    def aux_losses(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor, frame_mask: Tensor,
                   scale: Tensor | None = None) -> dict[str, Tensor]:
        """``{"sdr": sdr_weight * mean_i Var_k(lambda * S^k_ii)}`` over the global (paired) batch; ``lambda`` is
        ``scale`` (the loss's λ, gradient included, as in the release) unless ``sdr_scale`` is set."""
        parts = self.diagonal_parts(sentence, words, word_mask, frames, frame_mask)
        lam = self.sdr_scale if self.sdr_scale is not None else scale
        if lam is None:
            raise ValueError("TC-MGC's SDR needs the logit scale (scale=) or a fixed sdr_scale")
        return {"sdr": self.sdr_weight * (parts * lam).var(dim=-1).mean()}

    @staticmethod
    def flops(Bt: int, Bv: int, Nw: int, K: int, D: int) -> int:
        return tcmgc_flops(Bt, Bv, Nw, K, D)

    # -- internals ----------------------------------------------------------------------------------------------------

    def _text(self, sentence: Tensor, words: Tensor, wm: Tensor) -> tuple[Tensor, ...]:
        """Per-text tensors: LVA queries ``[Bt, 1 + n, D]``, s_hat, w_hat (padded -> 0), s_hat G, w_hat L, mask."""
        queries = self.layer_norm1(torch.cat([sentence[:, None], words], dim=1))
        s_hat = unit(sentence)
        w_hat = unit(words).masked_fill(~wm[..., None], 0.0)
        return queries, s_hat, w_hat, s_hat @ self.global_mat_weight, w_hat @ self.local_mat_weight, wm

    def _lva(self, queries: Tensor, f_ln: Tensor, fbias: Tensor, paired: bool) -> Tensor:
        """Normalised LVA outputs ``[tb, c, Q, D]`` (``c = 1`` when ``paired``: text i with video i)."""
        tb, nq, d = queries.shape
        h, e = self.num_heads, d // self.num_heads
        qh = queries.view(tb, nq, h, e) * (1.0 / math.sqrt(e))
        fh = f_ln.view(f_ln.shape[0], f_ln.shape[1], h, e)
        if paired:
            logits = torch.einsum("tqhe,tkhe->tqhk", qh, fh)[:, None] + fbias[:, None, None, None, :]
            pooled = torch.einsum("tqhk,tkhe->tqhe", torch.softmax(logits, dim=-1)[:, 0], fh)[:, None]
        else:
            logits = torch.einsum("tqhe,ckhe->tcqhk", qh, fh) + fbias[None, :, None, None, :]
            pooled = torch.einsum("tcqhk,ckhe->tcqhe", torch.softmax(logits, dim=-1), fh)
        o = self.layer_norm2(pooled.reshape(*pooled.shape[:3], d))
        return unit(self.layer_norm3(o + self.dropout(self.linear_proj(o))))

    def _block(self, queries: Tensor, s_hat: Tensor, w_hat: Tensor, s_g: Tensor, w_l: Tensor, wm: Tensor,
               f_ln: Tensor, fbias: Tensor, paired: bool) -> Tensor:
        """Parts ``[tb, c, 4]`` for a block of texts x videos (or ``[tb, 1, 4]`` for aligned pairs)."""
        o = self._lva(queries, f_ln, fbias, paired)
        v, u = o[:, :, 0], o[:, :, 1:]  # [tb, c, D], [tb, c, n, D]
        wmask = wm[:, None, :]
        s_vs = (s_g[:, None, :] * v).sum(-1)
        x = torch.einsum("tnd,tcd->tcn", w_hat, v)
        y = torch.einsum("td,tcnd->tcn", s_hat, u)
        m = torch.einsum("tnd,tcud->tcnu", w_l, u)  # [tb, c, n(t), n(u)]
        s_vw = self._sr_isa(x, wmask)
        s_sf = self._sr_fuse_isa(y, wmask)
        s_fw = self._bi_sr_isa(m, wm)
        return torch.stack([s_vs, s_vw, s_sf, s_fw], dim=-1)

    def _sr_isa(self, x: Tensor, wmask: Tensor) -> Tensor:
        """SR-a: the top-n_a valid entries (sorted), then ISA."""
        k = min(self.n_keep, x.shape[-1])
        top = x.masked_fill(~wmask, NEG_INF).topk(k, dim=-1).values
        return isa(top, self.attentive_word_logit_weight[:k, :k], top > NEG_INF, self.softmax_lambda)

    def _sr_fuse_isa(self, y: Tensor, wmask: Tensor) -> Tensor:
        """SR-b: the top-n_a valid entries plus one softmax-weighted fusion of the other valid entries, then ISA."""
        k = min(self.n_keep, y.shape[-1])
        ys = y.masked_fill(~wmask, NEG_INF).sort(dim=-1, descending=True).values
        top, rest = ys[..., :k], ys[..., k:]
        rest_valid = rest > NEG_INF
        rest0 = rest.masked_fill(~rest_valid, 0.0)
        fused = (torch.softmax(rest0 + mask_bias(rest_valid, y.dtype), dim=-1) * rest0).sum(-1, keepdim=True)
        vals = torch.cat([top, fused], dim=-1)
        valid = torch.cat([top > NEG_INF, rest_valid.any(-1, keepdim=True)], dim=-1)
        return isa(vals, self.concat_frame_word_logit_weight[:k + 1, :k + 1], valid, self.softmax_lambda)

    def _bi_sr_isa(self, m: Tensor, wm: Tensor) -> Tensor:
        """Bi-SR on the frame-word matrix (top-n_a per column, then per kept row) and bidirectional ISA."""
        k = min(self.n_keep, m.shape[-1])
        lam = self.softmax_lambda
        valid2 = wm[:, None, :, None] & wm[:, None, None, :]
        rows = m.masked_fill(~valid2, NEG_INF).topk(k, dim=-2).values  # [tb, c, k(rank), n(u)]
        vals = rows.topk(k, dim=-1).values  # [tb, c, k, k]
        valid = vals > NEG_INF
        word_level = isa(vals.transpose(-1, -2), self.attentive_word_mat_weight[:k, :k], valid.transpose(-1, -2),
                         lam)  # over rows, per column: [tb, c, k]
        frame_level = isa(vals, self.attentive_frame_word_mat_weight[:k, :k], valid, lam)  # over columns, per row
        s2f = isa(word_level, self.attentive_frame_word_mat_weight2[:k, :k], valid.any(-2), lam)
        v2w = isa(frame_level, self.attentive_word_mat_weight2[:k, :k], valid.any(-1), lam)
        return 0.5 * (s2f + v2w)


def tcmgc_flops(Bt: int, Bv: int, Nw: int, K: int, D: int, keep_rate: float = 0.1) -> int:
    """Similarity-stage FLOPs (2 per multiply-add; LayerNorm, softmax, sorting and top-k not counted).

    Text projections (s_hat G, w_hat L); per pair and per LVA query (sentence + N_w words) the attention logits and
    pooling (``2 K D`` each) and ``linear_proj`` (``2 D^2``); the score dot products (S^VS, x, y: ``D`` each, M:
    ``N_w^2 D``); ISA products on the kept ``n_a`` entries; the rest-fusion; LSA.
    """
    pairs, n = Bt * Bv, max(1, int(Nw * keep_rate))
    text_proj = 2 * Bt * (1 + Nw) * D * D
    lva = pairs * (1 + Nw) * (2 * 2 * K * D + 2 * D * D)
    dots = 2 * pairs * D * (1 + 2 * Nw + Nw * Nw)

    def isa_cost(m: int) -> int:
        return 2 * (m * m + m)

    isa_all = pairs * (isa_cost(n) + isa_cost(n + 1) + 2 * max(Nw - n, 0) + 2 * n * isa_cost(n) + 2 * isa_cost(n))
    lsa = 2 * pairs * (16 + 4)
    return text_proj + lva + dots + isa_all + lsa

