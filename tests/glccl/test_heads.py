"""GLCCL head: fast exact form vs the naive (released-code) form, a per-pair loop, masking, parameters; MeanP; registry.

Random inputs come from a fixed seed, printed in every failure message.
"""

from __future__ import annotations

import math

import pytest
import torch

from glccl.heads import (
    GLCCLHead,
    MeanPHead,
    SimilarityHead,
    build_head,
    glccl_flops,
    glccl_scores_naive,
    glccl_scores_naive_chunked,
    list_heads,
    naive_glccl_flops,
)

SEED = 1234  # fixed: a failure reproduces

AOSM = ("word_logit_weight", "word_frame_logit_weight", "word_mat_weight", "word_frame_mat_weight",
        "word_mat_weight2", "word_frame_mat_weight2")


def _rng() -> tuple[int, torch.Generator]:
    seed = SEED
    return seed, torch.Generator().manual_seed(seed)


def _inputs(g, bt, bv, nw, k, d, dtype=torch.float64, p_word=0.7, p_frame=0.7, prefix_words=False, corr=0.0):
    scale = 1.5 / math.sqrt(d) * 4  # GLIM logits s.f / 5 of order 1-3: neither uniform nor one-hot weights
    s = torch.randn(bt, d, generator=g, dtype=dtype) * scale
    w = torch.randn(bt, nw, d, generator=g, dtype=dtype) * scale
    # Frames of a video share a component (as CLIP frame features do; cos ~0.8), so their GLIM-pooled average is not
    # much shorter than a frame. corr=0 gives independent frames: the worst case for float32 cancellation.
    f = (corr * torch.randn(bv, 1, d, generator=g, dtype=dtype)
         + (1 - corr ** 2) ** 0.5 * torch.randn(bv, k, d, generator=g, dtype=dtype)) * scale
    if prefix_words:  # tokenizer-style: SOT .. EOT then padding
        lengths = torch.randint(2, nw + 1, (bt,), generator=g)
        wm = torch.arange(nw)[None] < lengths[:, None]
    else:
        wm = torch.rand(bt, nw, generator=g) < p_word
        wm[:, 0] = True
    fm = torch.rand(bv, k, generator=g) < p_frame
    fm[:, 0] = True
    return s, w, wm, f, fm


def _head(g, nw, k, d, dtype=torch.float64, **kw) -> GLCCLHead:
    """A head with non-identity parameters (so every matrix matters)."""
    h = GLCCLHead(num_words=nw, num_frames=k, dim=d, **kw).to(dtype)
    with torch.no_grad():
        for p in h.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=dtype) / math.sqrt(p.shape[0]) * 2)
    return h


def _close(a, b, seed, rtol, what=""):
    scale = b.detach().abs().max().clamp_min(1e-12)
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(scale), msg=lambda m: f"seed={seed} {what}: {m}")


# ---------------------------------------------------------------- fast == naive

@pytest.mark.parametrize("bt,bv,nw,k,d,chunk,tchunk,trim,prefix", [
    (5, 7, 6, 4, 16, 3, 2, True, False),
    (9, 4, 8, 5, 12, 64, 4, True, True),
    (3, 11, 5, 3, 8, 4, 32, False, False),
    (12, 10, 7, 6, 32, 7, 5, True, True),
])
def test_fast_matches_naive(bt, bv, nw, k, d, chunk, tchunk, trim, prefix):
    seed, g = _rng()
    # float64, independent frames (worst case for the Gram-matrix cancellation): tight agreement.
    h = _head(g, nw, k, d, chunk_size=chunk, text_chunk=tchunk, trim_padding=trim)
    x = _inputs(g, bt, bv, nw, k, d, prefix_words=prefix)
    with torch.no_grad():
        score, parts = h(*x)
        ref_score, ref_parts = glccl_scores_naive(h, *x)
    assert score.shape == (bt, bv) and parts.shape == (bt, bv, 4)
    _close(parts, ref_parts, seed, 1e-10, "parts float64")
    _close(score, ref_score, seed, 1e-10, "score float64")
    torch.testing.assert_close(score, parts.mean(-1), msg=lambda m: f"seed={seed}: {m}")

    # float32, CLIP-like correlated frames.
    x = _inputs(g, bt, bv, nw, k, d, prefix_words=prefix, corr=0.9)
    x32 = [t.float() if t.is_floating_point() else t for t in x]
    h32 = _head(g, nw, k, d, chunk_size=chunk, text_chunk=tchunk, trim_padding=trim)
    with torch.no_grad():
        truth = glccl_scores_naive(h32, *x)[1]  # float64
        h32.float()
        fast, naive = h32(*x32)[1].double(), glccl_scores_naive(h32, *x32)[1].double()
    scale = float(truth.abs().max())
    # The video-sentence / video-word / sentence-frame scores agree within 1e-5 relative.
    _close(fast[..., :3], naive[..., :3], seed, 1e-5, "parts 0-2 float32")
    # The frame-word score nests two AOSMs at temperature 0.01 (errors amplified ~100x per level): the float32 naive
    # form itself is off the float64 value by up to ~2e-5 relative. Require the fast form to be as accurate.
    err_fast, err_naive = float((fast - truth).abs().max()), float((naive - truth).abs().max())
    assert err_fast <= 1e-5 * scale + 2 * err_naive, f"seed={seed}: float32 error {err_fast:.3g} vs naive {err_naive:.3g}"


def test_naive_chunked_equals_naive():
    seed, g = _rng()
    h = _head(g, 6, 4, 8)
    x = _inputs(g, 7, 9, 6, 4, 8)
    _close(glccl_scores_naive_chunked(h, *x, text_chunk=3, video_chunk=4)[1], glccl_scores_naive(h, *x)[1], seed,
           1e-12)


def test_gradients_match_naive():
    seed, g = _rng()
    bt, bv, nw, k, d = 4, 5, 6, 4, 8
    h = _head(g, nw, k, d, chunk_size=2, text_chunk=3)
    s, w, wm, f, fm = _inputs(g, bt, bv, nw, k, d, prefix_words=True)
    coef = torch.randn(bt, bv, 4, generator=g, dtype=torch.float64)

    def grads(fn):
        xs = [t.clone().requires_grad_(True) for t in (s, w, f)]
        h.zero_grad()
        (fn(h, xs[0], xs[1], wm, xs[2], fm)[1] * coef).sum().backward()
        return [t.grad for t in xs] + [p.grad.clone() for p in h.parameters()]

    fast = grads(lambda hh, *a: hh(*a))
    naive = grads(glccl_scores_naive)
    names = ["sentence", "words", "frames"] + [n for n, _ in h.named_parameters()]
    for name, a, b in zip(names, fast, naive, strict=True):
        assert torch.isfinite(a).all(), f"seed={seed}: non-finite grad {name}"
        _close(a, b, seed, 1e-9, f"grad {name}")


# ---------------------------------------------------------------- explicit per-pair loop (tiny)

def _loop_reference(h, s, w, wm, f, fm):
    """Every pair by hand: GLIM pooling per pair, then the four scores with explicit sums over valid indices."""
    tau, agg_t = h.temperature, h.aosm_temperature
    bt, nw, _ = w.shape
    bv, k, _ = f.shape

    def unit(x):
        return x / x.norm()

    def pool(q, j):  # GLIM: softmax over the valid frames of video j of <q, f_jk> / tau
        ks = [kk for kk in range(k) if fm[j, kk]]
        logits = torch.stack([q @ f[j, kk] / tau for kk in ks])
        wts = torch.softmax(logits, 0)
        return sum(wts[n] * f[j, kk] for n, kk in enumerate(ks))

    def agg(vals, weight, idx):  # sum_{t in idx} x_t [softmax(x / temp) W]_t, both sums over idx only
        x = torch.stack([vals[t] for t in idx])
        p = torch.softmax(x / agg_t, 0)
        return sum(vals[t] * sum(p[a] * weight[n, t] for a, n in enumerate(idx)) for t in idx)

    out = torch.zeros(bt, bv, 4, dtype=s.dtype)
    for i in range(bt):
        ts = [t for t in range(nw) if wm[i, t]]
        s_hat = unit(s[i])
        w_hat = {t: unit(w[i, t]) for t in ts}
        for j in range(bv):
            v_hat = unit(pool(s[i], j))
            u_hat = {t: unit(pool(w[i, t], j)) for t in ts}
            out[i, j, 0] = (s_hat @ h.global_mat_weight) @ v_hat
            out[i, j, 1] = agg({t: w_hat[t] @ v_hat for t in ts}, h.word_logit_weight, ts)
            out[i, j, 2] = agg({t: s_hat @ u_hat[t] for t in ts}, h.word_frame_logit_weight, ts)
            m = {(t, u): (w_hat[t] @ h.local_mat_weight) @ u_hat[u] for t in ts for u in ts}
            r = {u: agg({t: m[t, u] for t in ts}, h.word_mat_weight, ts) for u in ts}
            c = {t: agg({u: m[t, u] for u in ts}, h.word_frame_mat_weight, ts) for t in ts}
            out[i, j, 3] = 0.5 * (agg(r, h.word_frame_mat_weight2, ts) + agg(c, h.word_mat_weight2, ts))
    return out


def test_matches_per_pair_loop():
    seed, g = _rng()
    bt, bv, nw, k, d = 2, 3, 4, 3, 5
    h = _head(g, nw, k, d, chunk_size=2, text_chunk=1)
    x = _inputs(g, bt, bv, nw, k, d, p_word=0.6, p_frame=0.6)
    with torch.no_grad():
        _close(h(*x)[1], _loop_reference(h, *x), seed, 1e-10, "fast vs loop")
        _close(glccl_scores_naive(h, *x)[1], _loop_reference(h, *x), seed, 1e-10, "naive vs loop")


# ---------------------------------------------------------------- masking

def test_padded_values_change_nothing():
    seed, g = _rng()
    bt, bv, nw, k, d = 5, 6, 7, 5, 8
    h = _head(g, nw, k, d, chunk_size=4, text_chunk=2)
    s, w, wm, f, fm = _inputs(g, bt, bv, nw, k, d)
    w2, f2 = w.clone(), f.clone()
    w2[~wm] = torch.randn(int((~wm).sum()), d, generator=g, dtype=w.dtype) * 100
    f2[~fm] = torch.randn(int((~fm).sum()), d, generator=g, dtype=f.dtype) * 100
    w3, f3 = w.clone(), f.clone()
    w3[~wm], f3[~fm] = float("nan"), float("inf")
    with torch.no_grad():
        base = h(s, w, wm, f, fm)[1]
        for ww, ff in ((w2, f2), (w3, f3)):
            torch.testing.assert_close(h(s, ww, wm, ff, fm)[1], base, rtol=0, atol=0, msg=lambda m: f"seed={seed}: {m}")
            torch.testing.assert_close(glccl_scores_naive(h, s, ww, wm, ff, fm)[1], glccl_scores_naive(h, s, w, wm, f,
                                       fm)[1], rtol=0, atol=0, msg=lambda m: f"seed={seed}: {m}")
    wg, fg = w2.clone().requires_grad_(True), f2.clone().requires_grad_(True)
    h(s, wg, wm, fg, fm)[0].sum().backward()
    assert (wg.grad[~wm] == 0).all() and (fg.grad[~fm] == 0).all(), f"seed={seed}"


def test_video_without_valid_frames_scores_zero():
    seed, g = _rng()
    bt, bv, nw, k, d = 3, 4, 5, 4, 8
    h = _head(g, nw, k, d)
    s, w, wm, f, fm = _inputs(g, bt, bv, nw, k, d)
    fm[1] = False
    fg = f.clone().requires_grad_(True)
    score, parts = h(s, w, wm, fg, fm)
    assert torch.isfinite(parts).all(), f"seed={seed}"
    assert (parts[:, 1] == 0).all(), f"seed={seed}"
    score.sum().backward()
    assert torch.isfinite(fg.grad).all() and all(torch.isfinite(p.grad).all() for p in h.parameters())
    _close(parts, glccl_scores_naive(h, s, w, wm, f, fm)[1], seed, 1e-10)


def test_fewer_words_than_num_words_equals_masked_padding():
    seed, g = _rng()
    h = _head(g, 8, 4, 8)
    s, w, wm, f, fm = _inputs(g, 3, 4, 5, 4, 8)
    w_pad = torch.cat([w, torch.randn(3, 3, 8, generator=g, dtype=w.dtype)], 1)
    wm_pad = torch.cat([wm, torch.zeros(3, 3, dtype=torch.bool)], 1)
    with torch.no_grad():
        _close(h(s, w, wm, f, fm)[1], h(s, w_pad, wm_pad, f, fm)[1], seed, 1e-12)
    with pytest.raises(ValueError, match="num_words"):
        GLCCLHead(num_words=4, num_frames=4, dim=8).double()(s, w, wm, f, fm)


def _unmasked_formula(h, s, w, f):
    """The released GLCCL scores written directly, with no masking at all (the released code's behaviour)."""
    def n(x):
        return x / x.norm(dim=-1, keepdim=True)

    def agg(x, weight):  # over the last axis
        return (x * (torch.softmax(x / h.aosm_temperature, -1) @ weight)).sum(-1)

    v = torch.einsum("ijk,jkd->ijd", torch.softmax(torch.einsum("id,jkd->ijk", s, f) / h.temperature, -1), f)
    u = torch.einsum("ijtk,jkd->ijtd", torch.softmax(torch.einsum("itd,jkd->ijtk", w, f) / h.temperature, -1), f)
    v, u, s_hat, w_hat = n(v), n(u), n(s), n(w)
    vs = torch.einsum("id,ijd->ij", s_hat @ h.global_mat_weight, v)
    vw = agg(torch.einsum("itd,ijd->ijt", w_hat, v), h.word_logit_weight)
    sf = agg(torch.einsum("id,ijtd->ijt", s_hat, u), h.word_frame_logit_weight)
    m = torch.einsum("itd,ijud->ijtu", w_hat @ h.local_mat_weight, u)
    r = agg(m.transpose(-1, -2), h.word_mat_weight)
    c = agg(m, h.word_frame_mat_weight)
    fw = 0.5 * (agg(r, h.word_frame_mat_weight2) + agg(c, h.word_mat_weight2))
    return torch.stack([vs, vw, sf, fw], -1)


def test_all_true_masks_reproduce_unmasked_formula():
    seed, g = _rng()
    bt, bv, nw, k, d = 4, 5, 6, 4, 8
    h = _head(g, nw, k, d, chunk_size=3, text_chunk=3)
    s, w, wm, f, fm = _inputs(g, bt, bv, nw, k, d)
    ref = _unmasked_formula(h, s, w, f)
    with torch.no_grad():
        ones_w, ones_f = torch.ones_like(wm), torch.ones_like(fm)
        _close(h(s, w, ones_w, f, ones_f)[1], ref, seed, 1e-10, "all-true masks")
        h.mask_padding = False
        _close(h(s, w, wm, f, fm)[1], ref, seed, 1e-10, "mask_padding=False")
        _close(glccl_scores_naive(h, s, w, wm, f, fm)[1], ref, seed, 1e-10, "naive, mask_padding=False")


# ---------------------------------------------------------------- parameters, registry, MeanP

def test_parameters_are_exactly_g_l_and_six_aosm_identity():
    nw, k, d = 7, 5, 12
    h = GLCCLHead(num_words=nw, num_frames=k, dim=d)
    params = dict(h.named_parameters())
    assert set(params) == {"global_mat_weight", "local_mat_weight", *AOSM}  # GLIM itself: no parameters
    assert sum(p.numel() for p in h.parameters()) == 2 * d * d + 6 * nw * nw
    assert not list(h.buffers())
    for name, p in params.items():
        assert torch.equal(p, torch.eye(p.shape[0])), name
    assert h.num_parts == 4 and h.name == "glccl" and h.aux_loss_names == ()
    assert h.temperature == 5.0 and h.chunk_size == 64


def test_registry_and_build_head():
    assert {"glccl", "meanp"} <= set(list_heads())
    h = build_head("glccl", num_words=6, num_frames=4, dim=8, temperature=3.0, chunk_size=5)
    assert isinstance(h, GLCCLHead) and h.temperature == 3.0 and h.chunk_size == 5
    m = build_head("meanp", num_words=6, num_frames=4, dim=8)
    assert isinstance(m, MeanPHead) and isinstance(m, SimilarityHead)
    with pytest.raises(ValueError, match="glccl"):
        build_head("nope", num_words=6, num_frames=4, dim=8)
    with pytest.raises(ValueError, match="bogus"):
        build_head("glccl", num_words=6, num_frames=4, dim=8, bogus=1)
    with pytest.raises(ValueError, match="temperature"):  # MeanP has no GLIM temperature
        build_head("meanp", num_words=6, num_frames=4, dim=8, temperature=5.0)
    assert h.aux_losses(None, None, None, None, None, scale=None) == {}


def test_meanp():
    seed, g = _rng()
    s, w, wm, f, fm = _inputs(g, 4, 5, 6, 4, 8)
    fm[2] = False
    h = MeanPHead(num_words=6, num_frames=4, dim=8)
    assert not list(h.parameters())
    score, parts = h(s, w, wm, f, fm)
    assert parts.shape == (4, 5, 1) and torch.equal(score, parts[..., 0])
    for j in range(5):
        if not fm[j].any():
            assert (score[:, j] == 0).all()
            continue
        fj = f[j][fm[j]]
        v = (fj / fj.norm(dim=-1, keepdim=True)).mean(0)  # CLIP4Clip: the mean of the normalised frames
        ref = torch.nn.functional.cosine_similarity(s, v[None], dim=-1)
        _close(score[:, j], ref, seed, 1e-12)


def test_flop_formulas():
    fast, naive = glccl_flops(1000, 1000, 32, 12, 512), naive_glccl_flops(1000, 1000, 32, 12, 512)
    assert fast["total"] == sum(v for key, v in fast.items() if key != "total")
    assert fast["scores_gemm"] == 2 * 1000 * 1000 * 66 * 12 * 512
    assert naive["total"] > 1.8 * fast["total"]
