"""Naive GLCCL scores, computed the way the released code does (test reference and "naive GLCCL" benchmark).

It materialises the sentence-guided video features ``v`` ``[Bt, Bv, D]`` and the word-guided frame features ``u``
``[Bt, Bv, Nw, D]`` with :func:`glccl.glim.glim_pool`, L2-normalises them and evaluates the four scores from the
normalised vectors (``JingXiaolun/GLCCL`` ``modules/modeling_glccl.py``). With the head's ``mask_padding=False`` it is
the released formula; with masking it also leaves out padding (see :class:`glccl.heads.glccl.GLCCLHead`). Memory grows
with ``Bt * Bv * Nw * D``: use :func:`glccl_scores_naive_chunked` for large galleries.
"""

from __future__ import annotations

import torch
from torch import Tensor

from glccl.glim import glim_pool


def _masked_softmax(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over the True entries of ``mask`` (broadcast to ``x``); rows without any True entry get zero weights."""
    mask = mask.expand_as(x)
    any_valid = mask.any(dim, keepdim=True)
    x = x.masked_fill(~(mask | ~any_valid), float("-inf"))
    return torch.softmax(x, dim) * any_valid


def _normalize(x: Tensor) -> Tensor:
    """``x / ||x||`` over the last dim; an all-zero vector stays zero (instead of NaN)."""
    nsq = (x * x).sum(-1, keepdim=True)
    tiny = torch.finfo(x.dtype).tiny
    return x * torch.where(nsq > tiny, nsq.clamp_min(tiny).rsqrt(), torch.zeros_like(nsq))


def _aosm(x: Tensor, weight: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """X-CLIP's aggregator over the last dim, restricted to ``mask``: ``sum_n x_n [softmax(x / temp) W]_n``.

    Args:
        x: ``[..., n]``; weight: ``[n, n]``; mask: bool, broadcastable to ``x``.
    Returns: ``[...]``.
    """
    mask = mask.expand_as(x)
    x = x.masked_fill(~mask, 0.0)
    p = _masked_softmax(x / temperature, mask, -1)
    weights = p @ weight
    return (x * weights).masked_fill(~mask, 0.0).sum(-1)


def glccl_scores_naive(head, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                       frame_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Released-code GLCCL scores (plus masking) for one block.

    Args:
        head: a :class:`~glccl.heads.GLCCLHead` (its parameters, temperatures and ``mask_padding`` are used).
        sentence ``[Bt, D]``, words ``[Bt, Nw, D]``, word_mask ``[Bt, Nw]``, frames ``[Bv, K, D]``, frame_mask ``[Bv, K]``.
    Returns:
        score ``[Bt, Bv]`` and parts ``[Bt, Bv, 4]`` (video-sentence, video-word, sentence-frame, frame-word), unscaled.
    """
    nw = words.shape[1]
    if head.mask_padding:
        wm, fm = word_mask.bool(), frame_mask.bool()
    else:
        wm, fm = torch.ones_like(word_mask, dtype=torch.bool), torch.ones_like(frame_mask, dtype=torch.bool)
    tau, tau_agg = head.temperature, head.aosm_temperature
    W = {k: getattr(head, k)[:nw, :nw] for k in head.aosm_weight_names}

    w = words.masked_fill(~wm[..., None], 0.0)
    f = frames.masked_fill(~fm[..., None], 0.0)
    s = sentence

    # GLIM: text-guided pooling over frames with raw (unnormalised) features.
    glim = {"temperature": tau, "variant": head.glim, "frame_weight": getattr(head, "visual_logit_weight", None)}
    v = glim_pool(s[:, None], f, fm, **glim)[:, :, 0]  # [Bt, Bv, D]
    u = glim_pool(w, f, fm, **glim)  # [Bt, Bv, Nw, D]

    v_hat, u_hat = _normalize(v), _normalize(u)
    s_hat, w_hat = _normalize(s), _normalize(w)
    wmask = wm[:, None, :]  # [Bt, 1, Nw], words of text i

    s_vs = torch.einsum("ad,abd->ab", s_hat @ head.global_mat_weight, v_hat)
    x = torch.einsum("atd,abd->abt", w_hat, v_hat)
    s_vw = _aosm(x, W["word_logit_weight"], wmask, tau_agg)
    y = torch.einsum("ad,abtd->abt", s_hat, u_hat)
    s_sf = _aosm(y, W["word_frame_logit_weight"], wmask, tau_agg)

    m = torch.einsum("atd,abud->abtu", w_hat @ head.local_mat_weight, u_hat)  # [Bt, Bv, Nw(t), Nw(u)]
    mask4 = wm[:, None, None, :]  # the aggregated (last) axis of m or m^T, both index words of text i
    r = _aosm(m.transpose(-1, -2), W["word_mat_weight"], mask4, tau_agg)  # over t, for each u -> [Bt, Bv, Nw(u)]
    c = _aosm(m, W["word_frame_mat_weight"], mask4, tau_agg)  # over u, for each t -> [Bt, Bv, Nw(t)]
    s_fw = 0.5 * (_aosm(r, W["word_frame_mat_weight2"], wmask, tau_agg)
                  + _aosm(c, W["word_mat_weight2"], wmask, tau_agg))

    parts = torch.stack([s_vs, s_vw, s_sf, s_fw], dim=-1)
    return parts.mean(-1), parts


def glccl_scores_naive_chunked(head, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                               frame_mask: Tensor, text_chunk: int = 64,
                               video_chunk: int = 64) -> tuple[Tensor, Tensor]:
    """:func:`glccl_scores_naive` over ``text_chunk x video_chunk`` blocks (64x64, like the released evaluation)."""
    rows = []
    for i in range(0, sentence.shape[0], text_chunk):
        sl = slice(i, i + text_chunk)
        cols = [glccl_scores_naive(head, sentence[sl], words[sl], word_mask[sl], frames[j:j + video_chunk],
                                   frame_mask[j:j + video_chunk])[1]
                for j in range(0, frames.shape[0], video_chunk)]
        rows.append(torch.cat(cols, dim=1))
    parts = torch.cat(rows, dim=0)
    return parts.mean(-1), parts


def naive_glccl_flops(Bt: int, Bv: int, Nw: int, K: int, D: int) -> dict[str, int]:
    """Multiply-add FLOPs (2 per MAC) of the naive form; elementwise work (softmax, norms' divisions) not counted.

    Keys: ``text_proj`` (s_hat G, w_hat L), ``glim_logits`` (s.f, w.f), ``glim_pool`` (v, u), ``norms`` (||v||, ||u||),
    ``dots`` (S^VS, x, y), ``frame_word`` (the Nw x Nw matrix M from D-dim vectors), ``aosm`` (same as the fast
    form: the W products and the final weighted sums), ``total``.
    """
    pairs = Bt * Bv
    out = {
        "text_proj": 2 * Bt * (1 + Nw) * D * D,
        "glim_logits": 2 * pairs * (1 + Nw) * K * D,
        "glim_pool": 2 * pairs * (1 + Nw) * K * D,
        "norms": 2 * pairs * (1 + Nw) * D,
        "dots": 2 * pairs * (1 + 2 * Nw) * D,
        "frame_word": 2 * pairs * Nw * Nw * D,
        "aosm": 2 * pairs * (2 * Nw ** 3 + 4 * Nw ** 2 + 2 * Nw ** 2 + 4 * Nw),
    }
    out["total"] = sum(out.values())
    return out
