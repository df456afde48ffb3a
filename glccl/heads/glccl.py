"""GLCCL similarity head: GLIM (parameter-free text-guided pooling) + four AOSM-aggregated scores.

The scores of ``JingXiaolun/GLCCL`` ``modules/modeling_glccl.py`` (``_loose_similarity``, ``fine_grained_interaction``)
for every text x video pair: video-sentence, video-word, sentence-frame (over the word-guided features) and
frame-word, each unscaled (the loss applies the logit scale), and their mean as the score. ``glccl.glim`` has GLIM in
its plain form; ``glccl.heads.reference`` the scores computed the release's way.

Exact fast form. Every GLIM-pooled vector is a convex combination of a video's frames, so every score only needs
dot products with frames and the per-video frame Gram matrix ``Gram_j = F_j F_j^T`` ``[K, K]``:

- one GEMM per block, text rows ``[s; w_1..w_Nw; s_hat G; w_hat_1 L..w_hat_Nw L]`` times all frames of a video chunk,
  gives ``A = s.f``, ``P = w.f``, ``Bg = (s_hat G).f``, ``Q = (w_hat L).f``;
- alpha = softmax(A / tau), beta = softmax(P / tau); ``||v||^2 = alpha^T Gram alpha``, ``||u_t||^2 = beta_t^T Gram beta_t``;
- S^VS = alpha.Bg / ||v||; x_t = (alpha.P_t) / (||w_t|| ||v||); y_t = (beta_t.A) / (||s|| ||u_t||);
  M[t, u] = (Q_t . beta_u) / ||u_u|| (a [Nw, K] x [K, Nw] product per pair);
- AOSM ``sum_n x_n [softmax(x / 0.01) W]_n = sum_n softmax(x / 0.01)_n (W x)_n``: ``W x`` for all pairs is one GEMM.

Nothing of size ``Bt * Bv * Nw * D`` is formed; work per block is bounded by ``text_chunk x chunk_size``. The GLIM
variants of ``glccl.glim`` (``glim`` hyperparameter) only change the weights alpha and beta, so they keep this form.

Padding. ``mask_padding=False`` is the release: it masks nothing, so padded words (their features at the padded
positions) and padded frames take part in every softmax and sum. ``mask_padding=True`` (the default, this project's
choice): padded frames get zero weight in every GLIM softmax; padded words are excluded from every aggregation over
words (from the softmax and from the outer sum), on both word axes of M. A video whose frames are all masked pools to
the zero vector; its normalised features are defined as zero, so all four of its scores are exactly 0 against every
text (no NaN, zero gradient). Texts are likewise safe without valid words.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from glccl.glim import GLIM_VARIANTS

from .base import SimilarityHead, effective_masks, register_head

AOSM_WEIGHT_NAMES = ("word_logit_weight", "word_frame_logit_weight", "word_mat_weight", "word_frame_mat_weight",
                     "word_mat_weight2", "word_frame_mat_weight2")


def _inv_norm(nsq: Tensor) -> Tensor:
    """1 / sqrt(nsq), and 0 where nsq is 0 (zero vectors normalise to zero); gradient-safe."""
    tiny = torch.finfo(nsq.dtype).tiny
    return torch.where(nsq > tiny, nsq.clamp_min(tiny).rsqrt(), torch.zeros_like(nsq))


def _mask_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive softmax bias: 0 on valid entries, -inf on padded ones; rows with no valid entry get 0 everywhere."""
    keep = mask | ~mask.any(-1, keepdim=True)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~keep, float("-inf"))


def _aosm(x: Tensor, weight: Tensor, bias: Tensor, inv_temp: float) -> Tensor:
    """AOSM over the last dim: ``sum_n softmax(x / temp + bias)_n (x W^T)_n``; x must be 0 at padded positions."""
    p = torch.softmax(torch.add(bias, x, alpha=inv_temp), dim=-1)
    return (p * (x @ weight.T)).sum(-1)


def _aosm_last(xs: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """AOSM over the last dim of ``xs = x / temp`` (returns ``result / temp``): ``sum_n softmax(xs + bias)_n (xs W^T)_n``.

    ``xs`` ``[..., m, n]`` (contiguous, so ``xs W^T`` is one plain GEMM) must be 0 at padded positions of the aggregated
    axis; bias ``[..., 1, n]`` or None.
    """
    p = torch.softmax(xs if bias is None else xs + bias, dim=-1)
    return (p * (xs @ weight.T)).sum(-1)


@register_head("glccl")
class GLCCLHead(SimilarityHead):
    """GLCCL head. Parameters: G, L (``dim x dim``) and six ``num_words x num_words`` AOSM matrices, all identity
    (plus the ``num_frames x num_frames`` GLIM matrix P for ``glim="softmax_linear_softmax"``).

    Args:
        num_words: Nw, the word axis length the AOSM matrices are built for (inputs may have Nw <= num_words).
        num_frames: K (GLIM has no per-frame parameters except P of the ``softmax_linear_softmax`` variant).
        dim: feature width D.
        mask_padding: False treats padding as the release does (it takes part everywhere).
        temperature: GLIM softmax temperature (5 in the released code).
        glim: GLIM variant, one of ``glccl.glim.GLIM_VARIANTS``: ``softmax`` (released default),
            ``softmax_linear_softmax`` (the release's ablation with a learned K x K weight) or ``mean`` (no text
            guidance: plain mean pooling).
        aosm_temperature: the AOSM softmax temperature (0.01, hard-coded in X-CLIP/GLCCL).
        chunk_size: videos per block; bounds peak memory together with ``text_chunk``.
        text_chunk: texts per block (small blocks keep the per-pair work cache resident). On CPU a block is further
            capped at ``cpu_block_elements`` values of its ``tb x c x Nw x Nw`` frame-word tensors (16 texts x 64
            videos at Nw = 32, 4 x 64 at Nw = 64): larger blocks fall out of cache and run ~1.5x slower.
        trim_padding: process texts grouped by length and drop word positions that are padded in a whole block
            (exact: padded words contribute nothing when they are masked).
    """

    part_names = ("video_sentence", "video_word", "sentence_frame", "frame_word")
    default_csc = True
    release = "JingXiaolun/GLCCL modules/modeling_glccl.py"
    aosm_weight_names = AOSM_WEIGHT_NAMES
    cpu_block_elements = 2**20  # see ``text_chunk``; None: no cap

    def __init__(self, num_words: int, num_frames: int, dim: int, mask_padding: bool = True, temperature: float = 5.0,
                 glim: str = "softmax", aosm_temperature: float = 0.01, chunk_size: int = 64, text_chunk: int = 32,
                 trim_padding: bool = True):
        super().__init__()
        if chunk_size < 1 or text_chunk < 1:
            raise ValueError(f"chunk_size and text_chunk must be >= 1, got {chunk_size}, {text_chunk}")
        if glim not in GLIM_VARIANTS:
            raise ValueError(f"unknown glim variant {glim!r} (one of {', '.join(GLIM_VARIANTS)})")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.num_words, self.num_frames, self.dim = num_words, num_frames, dim
        self.temperature = float(temperature)
        self.glim = glim
        self.aosm_temperature = float(aosm_temperature)
        self.chunk_size, self.text_chunk = chunk_size, text_chunk
        self.mask_padding, self.trim_padding = mask_padding, trim_padding
        self.global_mat_weight = nn.Parameter(torch.eye(dim))  # G, video-sentence score
        self.local_mat_weight = nn.Parameter(torch.eye(dim))  # L, frame-word score
        for n in AOSM_WEIGHT_NAMES:
            setattr(self, n, nn.Parameter(torch.eye(num_words)))
        if glim == "softmax_linear_softmax":
            self.visual_logit_weight = nn.Parameter(torch.eye(num_frames))  # P

    @staticmethod
    def flops(Bt: int, Bv: int, Nw: int, K: int, D: int) -> int:
        return glccl_flops(Bt, Bv, Nw, K, D)["total"]

    def extra_repr(self) -> str:
        return (f"num_words={self.num_words}, dim={self.dim}, temperature={self.temperature}, glim={self.glim}, "
                f"chunk_size={self.chunk_size}, text_chunk={self.text_chunk}, mask_padding={self.mask_padding}")

    def forward(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Scores ``[Bt, Bv]`` and parts ``[Bt, Bv, 4]`` (video-sentence, video-word, sentence-frame, frame-word)."""
        return self._scores(sentence, words, word_mask, frames, frame_mask)

    def score_pairs(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor, frame_mask: Tensor,
                    index: Tensor) -> tuple[Tensor, Tensor]:
        """Each text against its own videos: text i with videos ``index[i]`` (``[Bt, S]`` rows of ``frames``).

        Returns score ``[Bt, S]`` and parts ``[Bt, S, 4]``, the values :meth:`forward` gives for those pairs (e.g.
        re-ranking per-query shortlists without scoring all ``Bt x Bv`` pairs). Per-video work (Gram matrices) is
        done once per row of ``frames``; each block gathers only its own candidates.
        """
        if index.ndim != 2 or index.shape[0] != sentence.shape[0]:
            raise ValueError(f"index must be [Bt, S] for Bt = {sentence.shape[0]} texts, got {tuple(index.shape)}")
        return self._scores(sentence, words, word_mask, frames, frame_mask, index.long())

    def _scores(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor, frame_mask: Tensor,
                index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """forward (``index`` None: every text x every video) or score_pairs (text i x videos ``index[i]``)."""
        bt, nw, d = words.shape
        bv = frames.shape[0] if index is None else index.shape[1]
        if nw > self.num_words:
            raise ValueError(f"words have {nw} positions but the head was built for num_words={self.num_words}")
        wm, fm = effective_masks(word_mask, frame_mask, self.mask_padding)
        dtype = frames.dtype

        # Text side, once: raw s, w (GLIM logits), normalised s_hat G, w_hat L (score rows); padded words -> 0.
        w0 = words.masked_fill(~wm[..., None], 0.0)
        s_inv = _inv_norm((sentence * sentence).sum(-1))  # [Bt]
        w_inv = _inv_norm((w0 * w0).sum(-1))  # [Bt, Nw], 0 on padded words
        s_g = (sentence * s_inv[:, None]) @ self.global_mat_weight
        w_l = (w0 * w_inv[..., None]) @ self.local_mat_weight
        wvalid = wm.to(dtype)
        wbias = _mask_bias(wm, dtype)

        # Video side, once: zeroed padded frames, Gram matrices, frame softmax bias.
        f0 = frames.masked_fill(~fm[..., None], 0.0)
        f64 = f0.double() if dtype in (torch.float32, torch.float16, torch.bfloat16) else f0
        gram = f64 @ f64.transpose(1, 2)  # [Bv, K, K], float64 for float32 inputs (see _block)
        fbias = _mask_bias(fm, dtype)  # [Bv, K]

        # Text blocks, grouped by length so trailing padded word positions can be dropped per block.
        lengths = (torch.arange(1, nw + 1, device=wm.device) * wm).amax(-1) if self.trim_padding else None
        order = None
        tc = self.text_chunk
        if frames.device.type == "cpu" and self.cpu_block_elements:
            tc = max(1, min(tc, self.cpu_block_elements // (min(self.chunk_size, max(bv, 1)) * nw * nw)))
        if lengths is not None and bt > tc and bool((lengths != lengths[0]).any()):
            order = torch.argsort(lengths, stable=True)
        rows = []
        for i in range(0, bt, tc):
            idx = order[i:i + tc] if order is not None else slice(i, i + tc)
            n = max(int(lengths[idx].max()), 1) if lengths is not None else nw
            text = (sentence[idx], w0[idx, :n], s_g[idx], w_l[idx, :n], s_inv[idx], w_inv[idx, :n], wvalid[idx, :n],
                    wbias[idx, :n])
            cs = self.chunk_size
            if index is None:
                cols = [self._block(*text, f0[j:j + cs], gram[j:j + cs], fbias[j:j + cs]) for j in range(0, bv, cs)]
            else:  # this block's own candidates, gathered: [tb, cs, ...]
                ix = [index[idx, j:j + cs] for j in range(0, bv, cs)]
                cols = [self._block(*text, *(t.index_select(0, x.reshape(-1)).view(*x.shape, *t.shape[1:])
                                             for t in (f0, gram, fbias)))
                        for x in ix]
            rows.append(torch.cat(cols, dim=1) if len(cols) > 1 else cols[0])
        parts = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
        if order is not None:
            parts = parts[torch.argsort(order)]
        return parts.mean(-1), parts

    def _glim_weights(self, logits: Tensor, fbias: Tensor, inv_tau: float) -> Tensor:
        """GLIM weights ``[..., K, Q]`` over the frame axis (dim -2) from the raw dot products ``logits``."""
        fb = fbias[..., None]
        if self.glim == "mean":
            return torch.softmax(fb.expand(logits.shape), dim=-2)
        wts = torch.softmax(torch.add(fb, logits, alpha=inv_tau), dim=-2)
        if self.glim == "softmax_linear_softmax":  # softmax([softmax(x / tau) P] / tau): P acts on the frame axis
            k = logits.shape[-2]
            wts = torch.softmax(torch.add(fb, self.visual_logit_weight[:k, :k].T @ wts, alpha=inv_tau), dim=-2)
        return wts

    def _block(self, s: Tensor, w: Tensor, s_g: Tensor, w_l: Tensor, s_inv: Tensor, w_inv: Tensor, wvalid: Tensor,
               wbias: Tensor, f: Tensor, gram: Tensor, fbias: Tensor) -> Tensor:
        """Parts ``[tb, c, 4]`` for ``tb`` texts (``n`` word positions) x ``c`` videos (f ``[c, K, D]``, gram ``[c, K, K]``,
        fbias ``[c, K]``), or for each text x its own ``c`` videos (f ``[tb, c, K, D]``, gram and fbias likewise).

        Per-pair tensors keep the frame axis being reduced at dim -2 (PyTorch's CPU softmax is faster there than on a
        short last dim), e.g. the GEMM output is laid out ``[tb, c, K, 2 + 2n]``; the ``n x n`` frame-word matrices
        are aggregated along their last dim instead, so their AOSM ``W`` products are plain GEMMs without copies.
        """
        tb, n, d = w.shape
        c, k = f.shape[-3], f.shape[-2]
        inv_tau, inv_agg = 1.0 / self.temperature, 1.0 / self.aosm_temperature

        # The one big GEMM: [c * K, D] x [D, tb * (2 + 2n)] -> pair-major [tb, c, K, 2 + 2n].
        text_rows = torch.cat([s[:, None], w, s_g[:, None], w_l], dim=1).reshape(-1, d)
        if f.ndim == 3:
            r = (f.reshape(-1, d) @ text_rows.T).view(c, k, tb, 2 + 2 * n).permute(2, 0, 1, 3).contiguous()
            gram, fbias = gram[None], fbias[None]
        else:  # per-text videos (score_pairs): a batched GEMM, already pair-major
            r = torch.bmm(f.reshape(tb, c * k, d), text_rows.view(tb, 2 + 2 * n, d).transpose(1, 2))
            r = r.view(tb, c, k, 2 + 2 * n)
        a, bg = r[..., 0], r[..., 1 + n]  # s.f, (s_hat G).f: [tb, c, K]
        pt, qt = r[..., 1:1 + n], r[..., 2 + n:]  # w.f, (w_hat L).f: [tb, c, K, n]

        # GLIM weights over frames for the sentence and every word at once; pooled norms from the Gram matrices.
        wts = self._glim_weights(r[..., :1 + n], fbias, inv_tau)
        # ||pooled||^2 = wts^T Gram wts cancels when frames disagree: accumulate it in float64 (Gram is float64).
        wq = wts.to(gram.dtype)
        inv = _inv_norm(((gram @ wq) * wq).sum(-2)).to(wts.dtype)  # 1/||v||, 1/||u_t||: [tb, c, 1 + n]
        alpha, beta = wts[..., 0], wts[..., 1:]  # [tb, c, K], [tb, c, K, n]
        inv_v = inv[..., 0]
        inv_u = inv[..., 1:] * wvalid[:, None, :]  # padded words' features u_t are excluded: set to 0

        s_vs = (alpha * bg).sum(-1) * inv_v
        x = (pt * alpha[..., None]).sum(-2) * (w_inv[:, None, :] * inv_v[..., None])  # w_hat_t . v_hat
        y = (beta * a[..., None]).sum(-2) * (s_inv[:, None, None] * inv_u)  # s_hat . u_hat_t
        # u_hat_u = sum_k bn[k, u] f_k / 0.01: the frame-word matrix comes out pre-divided by the AOSM temperature.
        bn = beta * (inv_u * inv_agg)[:, :, None, :]  # [tb, c, K, n]
        m = qt.mT @ bn  # [tb, c, n(t), n(u)]: (w_hat_t L) . u_hat_u / 0.01
        mt = bn.mT @ qt  # its transpose [tb, c, n(u), n(t)]

        b1 = wbias[:, None, :]
        # Aggregate along the last dim (m for c over u, its transpose mt for r over t): W products are plain GEMMs.
        b2 = wbias[:, None, None, :] if bool(wvalid.lt(1).any()) else None
        rr = _aosm_last(mt, self.word_mat_weight[:n, :n], b2) * self.aosm_temperature  # over t: [tb, c, n(u)]
        cc = _aosm_last(m, self.word_frame_mat_weight[:n, :n], b2) * self.aosm_temperature  # over u: [tb, c, n(t)]
        s_vw = _aosm(x, self.word_logit_weight[:n, :n], b1, inv_agg)
        s_sf = _aosm(y, self.word_frame_logit_weight[:n, :n], b1, inv_agg)
        s_fw = 0.5 * (_aosm(rr, self.word_frame_mat_weight2[:n, :n], b1, inv_agg)
                      + _aosm(cc, self.word_mat_weight2[:n, :n], b1, inv_agg))
        return torch.stack([s_vs, s_vw, s_sf, s_fw], dim=-1)


def glccl_flops(Bt: int, Bv: int, Nw: int, K: int, D: int) -> dict[str, int]:
    """Multiply-add FLOPs (2 per MAC) of the fast form; softmax/exp and other elementwise work are not counted.

    Keys: ``text_proj`` (s_hat G, w_hat L; once per text), ``gram`` (F_j F_j^T; once per video), ``scores_gemm``
    (the one big GEMM: ``Bt (2 + 2 Nw)`` text rows x ``Bv K`` frames x D), ``glim_norms`` (alpha^T Gram alpha and
    beta_t^T Gram beta_t), ``dots`` (S^VS, x, y from the GEMM output), ``frame_word`` (M = Q beta^T and its
    transpose, both computed), ``aosm`` (W x products: 2 on M with Nw^3 MACs, 4 on vectors with Nw^2; and the final
    softmax-weighted sums), ``total``. With all words valid; trimming padded words reduces the real count.
    """
    pairs = Bt * Bv
    out = {
        "text_proj": 2 * Bt * (1 + Nw) * D * D,
        "gram": 2 * Bv * K * K * D,
        "scores_gemm": 2 * pairs * (2 + 2 * Nw) * K * D,
        "glim_norms": 2 * pairs * (1 + Nw) * (K * K + K),
        "dots": 2 * pairs * (1 + 2 * Nw) * K,
        "frame_word": 2 * 2 * pairs * Nw * Nw * K,
        "aosm": 2 * pairs * (2 * Nw ** 3 + 4 * Nw ** 2 + 2 * Nw ** 2 + 4 * Nw),
    }
    out["total"] = sum(out.values())
    return out
