"""``mask_padding=False`` reproduces every head's released scoring exactly, with padding present.

Each reference below is written from the release's own formula, the way its code computes it (dense einsums over all
positions, softmaxes over whole axes, masks only where the release applies them), independently of the heads' fast
forms. Inputs carry padded words and frames with arbitrary values, so a head that drops padding where the release
keeps it (or the reverse) fails. Float64 throughout; the tolerance is float64 rounding.
"""

from __future__ import annotations

import pytest
import torch

from glccl.heads import build_head, get_head_class, list_heads
from tests.glccl.test_heads_baselines import naive_glscl, naive_seqtransf, naive_tcmgc, naive_xpool

BT, BV, NW, K, D = 4, 5, 7, 5, 16
SEED = 20260517
EXTRA = {"tcmgc": {"keep_rate": 0.5}, "xpool": {"num_heads": 2}}


def _inputs(seed: int = SEED):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(BT, D, generator=g, dtype=torch.float64)
    w = torch.randn(BT, NW, D, generator=g, dtype=torch.float64)
    f = torch.randn(BV, K, D, generator=g, dtype=torch.float64)
    wm = torch.arange(NW)[None] < torch.tensor([NW, 2, 5, 4])[:, None]  # tokenizer-style trailing padding
    fm = torch.ones(BV, K, dtype=torch.bool)
    fm[1, 3:] = False
    fm[2, 1:] = False
    fm[4, 4:] = False
    w[~wm] = 3.0 * torch.randn(int((~wm).sum()), D, generator=g, dtype=torch.float64)  # what padded positions hold
    f[~fm] = 2.0 * torch.randn(int((~fm).sum()), D, generator=g, dtype=torch.float64)
    return s, w, wm, f, fm


def _head(name: str, mask_padding: bool = False, **kw):
    torch.manual_seed(0)
    head = build_head(name, num_words=NW, num_frames=K, dim=D, mask_padding=mask_padding,
                      **{**EXTRA.get(name, {}), **kw})
    head = head.double().eval()
    with torch.no_grad():  # away from the identity initialisation, so every matrix matters
        g = torch.Generator().manual_seed(1)
        for n, p in head.named_parameters():
            if p.dim() == 2 and p.shape[0] == p.shape[1] and "decoder" not in n:
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif "norm" in n:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return head


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def _agg(x, weight, dim):
    """X-CLIP/GLCCL ``sum(x * (softmax(x / 1e-2) @ W))`` along ``dim`` of ``x``."""
    xt = x.movedim(dim, -1)
    return (xt * (torch.softmax(xt / 1e-2, dim=-1) @ weight)).sum(-1)


# ---- the releases' formulas -------------------------------------------------------------------------------------------

def release_glccl(h, s, w, wm, f, fm, variant="softmax"):
    """``modeling_glccl.py``: ``_get_text_guided_video_features`` (no mask), ``_loose_similarity``,
    ``fine_grained_interaction``; every word position and every frame takes part."""

    def guided(q):  # [a, d] -> [a, b, d]
        wgt = torch.softmax(torch.einsum("ad,bvd->abv", q, f) / 5, dim=-1)
        if variant == "softmax_linear_softmax":
            wgt = torch.softmax(torch.matmul(wgt, h.visual_logit_weight) / 5, dim=-1)
        elif variant == "mean":
            wgt = torch.full_like(wgt, 1.0 / f.shape[1])
        return torch.einsum("abv,bvd->abd", wgt, f)

    video = _unit(guided(s))  # [a, b, d]
    frame_feats = _unit(torch.stack([guided(w[:, t]) for t in range(w.shape[1])], dim=-2))  # [a, b, t, d]
    sent, words = _unit(s), _unit(w)
    vs = torch.einsum("ad,abd->ab", sent @ h.global_mat_weight, video)
    vw_sim = torch.einsum("abd,atd->atb", video, words)
    vw = _agg(vw_sim, h.word_logit_weight, dim=1)
    sf_sim = torch.einsum("ad,abtd->abt", sent, frame_feats)
    sf = _agg(sf_sim, h.word_frame_logit_weight, dim=-1)
    m = torch.einsum("atd,abvd->atbv", words @ h.local_mat_weight, frame_feats)
    word_level = _agg(m, h.word_mat_weight, dim=1)  # [a, b, v]
    frame_level = _agg(m, h.word_frame_mat_weight, dim=-1)  # [a, t, b]
    fw = 0.5 * (_agg(word_level, h.word_frame_mat_weight2, dim=-1) + _agg(frame_level, h.word_mat_weight2, dim=1))
    parts = torch.stack([vs, vw, sf, fw], dim=-1)
    return parts.mean(-1), parts


def release_xclip(h, s, w, wm, f, fm):
    """``modeling_xclip.py`` ``_loose_similarity``: the video mean is masked with ``video_mask``
    (``_mean_pooling_for_similarity_visual``); the word and frame aggregations run over every position."""
    fh = _unit(f)
    m_ = fm.to(f.dtype)[..., None]
    video = _unit((fh * m_).sum(1) / m_.sum(1))
    sent, words = _unit(s), _unit(w)
    vs = (sent @ h.global_mat_weight) @ video.T
    vw = _agg(torch.einsum("atd,bd->atb", words, video), h.word_logit_weight, dim=1)
    sf = _agg(torch.einsum("ad,bvd->abv", sent, fh), h.frame_logit_weight, dim=-1)
    m = torch.einsum("atd,bvd->abtv", words @ h.local_mat_weight, fh)
    word_level = _agg(m, h.word_mat_weight, dim=2)  # over words: [a, b, v]
    frame_level = _agg(m, h.frame_mat_weight, dim=3)  # over frames: [a, b, t]
    fw = 0.5 * (_agg(word_level, h.frame_mat_weight2, dim=-1) + _agg(frame_level, h.word_mat_weight2, dim=-1))
    parts = torch.stack([vs, vw, sf, fw], dim=-1)
    return parts.mean(-1), parts


def _all(mask):
    return torch.ones_like(mask)


def release_xpool(h, s, w, wm, f, fm):
    """``layer6ai-labs/xpool``: no frame mask at all."""
    return naive_xpool(h, s, w, _all(wm), f, _all(fm))


def release_tcmgc(h, s, w, wm, f, fm):
    """``modeling_tcmgc.py`` / ``module_xpool.py``: nothing is masked (the mask lines are commented out)."""
    return naive_tcmgc(h, s, w, _all(wm), f, _all(fm))


def release_glscl(h, s, w, wm, f, fm):
    """``zchoi/GLSCL`` ``modeling.py``: the GIM weights are multiplied by the frame mask; the query decoder gets no
    memory padding mask, so it attends to padded frames and padded word positions."""
    ref_masked_gim = naive_glscl(h, s, w, wm, f, fm)[1][..., 0]
    ref_open_decoder = naive_glscl(h, s, w, _all(wm), f, _all(fm))[1][..., 1]
    parts = torch.stack([ref_masked_gim, ref_open_decoder], dim=-1)
    return parts[..., 0] + h.local_weight * parts[..., 1], parts


def release_clip4clip(h, s, w, wm, f, fm):
    """``ArrowLuo/CLIP4Clip`` ``_loose_similarity`` (meanP / seqTransf): normalised frames, masked mean, cosine."""
    return naive_seqtransf(h, s, w, wm, f, fm)


RELEASED = {"glccl": release_glccl, "xclip": release_xclip, "xpool": release_xpool, "tcmgc": release_tcmgc,
            "glscl": release_glscl, "meanp": release_clip4clip, "seqtransf": release_clip4clip}


# ---- tests ------------------------------------------------------------------------------------------------------------

def test_every_registered_head_has_a_release_reference():
    assert set(list_heads()) == set(RELEASED), "a new head needs its release reference here"
    assert all(get_head_class(n).release for n in list_heads())


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_setting_is_exact_with_padding(name):
    head = _head(name)
    x = _inputs()
    with torch.no_grad():
        score, parts = head(*x)
        ref_score, ref_parts = RELEASED[name](head, *x)
    torch.testing.assert_close(parts, ref_parts, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(score, ref_score, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_masked_default_differs_from_the_release_only_through_padding(name):
    """The default (masked) mode is a different function when padding is present (so the test above can tell the
    two apart), and the same one without padding."""
    s, w, wm, f, fm = _inputs()
    released = _head(name)
    masked = _head(name, mask_padding=True)
    masked.load_state_dict(released.state_dict())
    with torch.no_grad():
        all_w, all_f = torch.ones_like(wm), torch.ones_like(fm)
        torch.testing.assert_close(masked(s, w, all_w, f, all_f)[1], released(s, w, all_w, f, all_f)[1],
                                   rtol=1e-10, atol=1e-12)
        differs = not torch.allclose(masked(s, w, wm, f, fm)[1], released(s, w, wm, f, fm)[1], rtol=1e-6, atol=1e-8)
    # CLIP4Clip masks its only aggregation (the frame mean) in the release too: the two settings are one function
    assert differs == (name not in ("meanp", "seqtransf")), name


@pytest.mark.parametrize("variant", ["softmax_linear_softmax", "mean"])
def test_glccl_glim_variants_match_the_release_formula(variant):
    head = _head("glccl", glim=variant)
    x = _inputs(seed=SEED + 1)
    with torch.no_grad():
        got = head(*x)[1]
        ref = release_glccl(head, *x, variant=variant)[1]
        plain = release_glccl(head, *x)[1]
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(got, plain, rtol=1e-6, atol=1e-8)  # the variant changes the scores
