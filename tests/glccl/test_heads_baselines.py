"""Baseline similarity heads (seqtransf, xclip, xpool, tcmgc, glscl): each against a naive per-pair reference written
here from the released formulas (valid words/frames selected by index instead of masked), padding invariance,
Bt != Bv, chunking, gradients to every parameter, auxiliary losses, and one training step of the tiny model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glccl import engine
from glccl.heads import build_head, get_head_class
from glccl.heads.glscl import glscl_flops
from glccl.losses import build_loss
from glccl.model import create_model

HEADS = ("seqtransf", "xclip", "xpool", "tcmgc", "glscl")
BT, BV, NW, K, D = 4, 5, 7, 5, 16
EXTRA = {"tcmgc": {"keep_rate": 0.5}, "xpool": {"num_heads": 2}}  # n_a = 3 of 7 words; multi-head X-Pool


def _inputs(bt: int = BT, bv: int = BV, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    sentence = torch.randn(bt, D, generator=g, dtype=dtype)
    words = torch.randn(bt, NW, D, generator=g, dtype=dtype)
    frames = torch.randn(bv, K, D, generator=g, dtype=dtype)
    lengths = [NW, 2, 5, 4, 1, 6][:bt]  # text 1 has fewer valid words than n_a, text 4 a single one
    word_mask = torch.arange(NW)[None] < torch.tensor(lengths)[:, None]
    frame_mask = torch.ones(bv, K, dtype=torch.bool)
    for j, pad in {1: [3, 4], 2: [1, 2, 3, 4], 3: [0, 2]}.items():  # padding need not be trailing
        if j < bv:
            frame_mask[j, pad] = False
    return sentence, words, word_mask, frames, frame_mask


def _head(name: str, **kw):
    declared = get_head_class(name).hyperparameters()
    kw = {k: v for k, v in kw.items() if k in declared}  # e.g. chunk_size, for the heads that block their work
    torch.manual_seed(0)
    head = build_head(name, num_words=NW, num_frames=K, dim=D, **{**EXTRA.get(name, {}), **kw})
    head = head.double().eval()
    with torch.no_grad():  # move the identity-initialised weights away from identity so every term matters
        for n, p in head.named_parameters():
            if p.dim() == 2 and p.shape[0] == p.shape[1] and "decoder" not in n:
                p.add_(0.05 * torch.randn_like(p))
            elif "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return head


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def _aosm(x, w, temp=0.01):
    return (x * (torch.softmax(x / temp, -1) @ w)).sum(-1)


def _isa(x, w, lam=100.0):
    return (x * torch.softmax(torch.softmax(x * lam, -1) @ w * lam, -1)).sum(-1)


def _sub(w, idx):
    return w[idx][:, idx]


# ---- naive references: one (text, video) pair at a time, valid entries selected by index ----------------------------

def naive_seqtransf(head, s, w, wm, f, fm):
    out = torch.empty(s.shape[0], f.shape[0], 1, dtype=s.dtype)
    for i in range(s.shape[0]):
        for j in range(f.shape[0]):
            out[i, j, 0] = F.cosine_similarity(s[i], _unit(f[j][fm[j]]).mean(0), dim=0)
    return out[..., 0], out


def naive_xclip(head, s, w, wm, f, fm):
    out = torch.empty(s.shape[0], f.shape[0], 4, dtype=s.dtype)
    for i in range(s.shape[0]):
        wi = wm[i].nonzero()[:, 0]
        sh, wh = _unit(s[i]), _unit(w[i][wi])
        for j in range(f.shape[0]):
            fj = fm[j].nonzero()[:, 0]
            fh = _unit(f[j][fj])
            v = _unit(fh.mean(0))
            m = (wh @ head.local_mat_weight) @ fh.T  # [words, frames]
            word_level = torch.stack([_aosm(m[:, c], _sub(head.word_mat_weight, wi)) for c in range(len(fj))])
            frame_level = torch.stack([_aosm(m[r], _sub(head.frame_mat_weight, fj)) for r in range(len(wi))])
            out[i, j] = torch.stack([
                sh @ head.global_mat_weight @ v,
                _aosm(wh @ v, _sub(head.word_logit_weight, wi)),
                _aosm(fh @ sh, _sub(head.frame_logit_weight, fj)),
                0.5 * (_aosm(word_level, _sub(head.frame_mat_weight2, fj))
                       + _aosm(frame_level, _sub(head.word_mat_weight2, wi)))])
    return out.mean(-1), out


def naive_xpool(head, s, w, wm, f, fm):
    d, h = s.shape[-1], head.num_heads
    e = d // h
    out = torch.empty(s.shape[0], f.shape[0], 1, dtype=s.dtype)
    for i in range(s.shape[0]):
        q = head.q_proj(head.layer_norm1(s[i])).view(h, e)
        for j in range(f.shape[0]):
            fl = head.layer_norm1(f[j][fm[j]])
            k, v = head.k_proj(fl).view(-1, h, e), head.v_proj(fl).view(-1, h, e)
            heads = [torch.softmax(k[:, x] @ q[x] / math.sqrt(e), 0) @ v[:, x] for x in range(h)]
            o = head.layer_norm2(head.out_proj(torch.cat(heads)))
            o = head.layer_norm3(o + head.linear_proj(o))
            out[i, j, 0] = F.cosine_similarity(s[i], o, dim=0)
    return out[..., 0], out


def _lva(head, q, fl):
    h = head.num_heads
    e = q.shape[-1] // h
    a = torch.cat([torch.softmax(fl.view(-1, h, e)[:, x] @ q.view(h, e)[x] / math.sqrt(e), 0)
                   @ fl.view(-1, h, e)[:, x] for x in range(h)])
    o = head.layer_norm2(a)
    return _unit(head.layer_norm3(o + head.linear_proj(o)))


def naive_tcmgc_parts(head, s, w, wm, f, fm):
    out = torch.empty(s.shape[0], f.shape[0], 4, dtype=s.dtype)
    for i in range(s.shape[0]):
        wi = wm[i].nonzero()[:, 0]
        nv = len(wi)
        k = min(head.n_keep, nv)
        sh, wh = _unit(s[i]), _unit(w[i][wi])
        for j in range(f.shape[0]):
            fl = head.layer_norm1(f[j][fm[j]])
            v = _lva(head, head.layer_norm1(s[i]), fl)
            u = torch.stack([_lva(head, head.layer_norm1(w[i, t]), fl) for t in wi.tolist()])
            s_vs = sh @ head.global_mat_weight @ v
            s_vw = _isa((wh @ v).sort(descending=True).values[:k], head.attentive_word_logit_weight[:k, :k])
            ys = (u @ sh).sort(descending=True).values
            if nv > k:
                rest = ys[k:]
                cat = torch.cat([ys[:k], (torch.softmax(rest, 0) * rest).sum()[None]])
            else:
                cat = ys[:k]
            s_sf = _isa(cat, head.concat_frame_word_logit_weight[:len(cat), :len(cat)])
            m = (wh @ head.local_mat_weight) @ u.T  # [t, u]
            kept = m.sort(dim=0, descending=True).values[:k]  # row r = r-th largest of every column
            kept = kept.sort(dim=1, descending=True).values[:, :k]
            word_level = torch.stack([_isa(kept[:, c], head.attentive_word_mat_weight[:k, :k]) for c in range(k)])
            frame_level = torch.stack([_isa(kept[r], head.attentive_frame_word_mat_weight[:k, :k])
                                       for r in range(k)])
            s_fw = 0.5 * (_isa(word_level, head.attentive_frame_word_mat_weight2[:k, :k])
                          + _isa(frame_level, head.attentive_word_mat_weight2[:k, :k]))
            out[i, j] = torch.stack([s_vs, s_vw, s_sf, s_fw])
    return out


def naive_tcmgc(head, s, w, wm, f, fm):
    parts = naive_tcmgc_parts(head, s, w, wm, f, fm)
    omega = torch.softmax(head.lsa_scale * parts @ head.logit_weight, -1)
    return (omega * parts).sum(-1), parts


def _decode_naive(head, mem):
    return _unit(head.decoder(head.queries[None].to(mem.dtype), mem[None])[0])


def naive_glscl(head, s, w, wm, f, fm):
    out = torch.empty(s.shape[0], f.shape[0], 2, dtype=s.dtype)
    c_t = [_decode_naive(head, w[i][wm[i]]) for i in range(s.shape[0])]
    c_v = [_decode_naive(head, f[j][fm[j]]) for j in range(f.shape[0])]
    for i in range(s.shape[0]):
        for j in range(f.shape[0]):
            fj = f[j][fm[j]]
            pooled = torch.softmax(fj @ s[i] / head.temperature, 0) @ fj
            out[i, j, 0] = F.cosine_similarity(s[i], pooled, dim=0)
            out[i, j, 1] = (c_t[i] * c_v[j]).sum(-1).mean()
    return out[..., 0] + 0.5 * out[..., 1], out


NAIVE = {"seqtransf": naive_seqtransf, "xclip": naive_xclip, "xpool": naive_xpool, "tcmgc": naive_tcmgc,
         "glscl": naive_glscl}


# ---- tests ------------------------------------------------------------------------------------------------------------

def test_declared_contract():
    for name in HEADS:
        cls = get_head_class(name)
        assert cls.name == name and cls.uses_temporal is True
        assert len(cls.part_names) == {"seqtransf": 1, "xclip": 4, "xpool": 1, "tcmgc": 4, "glscl": 2}[name]


@pytest.mark.parametrize("name", HEADS)
def test_matches_naive_reference(name):
    head = _head(name, chunk_size=2)  # several video blocks
    x = _inputs()
    with torch.no_grad():
        score, parts = head(*x)
        ref_score, ref_parts = NAIVE[name](head, *x)
    assert score.shape == (BT, BV) and parts.shape == (BT, BV, head.num_parts)
    torch.testing.assert_close(parts, ref_parts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(score, ref_score, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", HEADS)
def test_padding_values_and_chunking_do_not_matter(name):
    s, w, wm, f, fm = _inputs(bt=3, bv=6, seed=1)
    with torch.no_grad():
        ref = _head(name)(s, w, wm, f, fm)
        w2, f2 = w.clone(), f.clone()
        g = torch.Generator().manual_seed(1)
        w2[~wm] = 1e3 * torch.randn(w2[~wm].shape, generator=g, dtype=w2.dtype)
        f2[~fm] = -1e3 * torch.randn(f2[~fm].shape, generator=g, dtype=f2.dtype)
        got = _head(name, chunk_size=1)(s, w2, wm, f2, fm)
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", HEADS)
def test_float32_batch_of_one_and_all_padded_video(name):
    head = build_head(name, num_words=NW, num_frames=K, dim=D, **EXTRA.get(name, {})).eval()
    s, w, wm, f, fm = _inputs(bt=1, bv=3, seed=2, dtype=torch.float32)
    fm[0] = False
    with torch.no_grad():
        score, parts = head(s, w, wm, f, fm)
    assert score.shape == (1, 3) and score.dtype == torch.float32
    assert torch.isfinite(score).all() and torch.isfinite(parts).all()


@pytest.mark.parametrize("name", [n for n in HEADS if n != "seqtransf"])
def test_gradients_reach_every_parameter(name):
    head = _head(name)
    head.train()
    s, w, wm, f, fm = (x.requires_grad_() if x.is_floating_point() else x for x in _inputs(bt=5, bv=5, seed=3))
    score, parts = head(s, w, wm, f, fm)
    total = score.sum() + parts.sum() + sum(head.aux_losses(s, w, wm, f, fm, scale=torch.tensor(20.0)).values())
    total.backward()
    for n, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n
    inputs = (s, f) if name == "xpool" else (s, w, f)  # X-Pool ignores the word features
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in inputs)


def test_tcmgc_sdr_matches_naive():
    head = _head("tcmgc")
    x = _inputs(bt=4, bv=4, seed=4)
    with torch.no_grad():
        parts = naive_tcmgc_parts(head, *x)
        diag = parts.diagonal(dim1=0, dim2=1).T  # [B, 4]
        assert head.aux_loss_names == ("sdr",)
        lam = torch.tensor(30.0, dtype=torch.float64)
        got = head.aux_losses(*x, scale=lam)  # the release: SDR on the lambda-scaled scores
        torch.testing.assert_close(got["sdr"], 0.5 * (lam * diag).var(-1).mean(), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(head.diagonal_parts(*x), diag, rtol=1e-6, atol=1e-8)
        fixed = _head("tcmgc", sdr_scale=1.0).aux_losses(*x, scale=lam)["sdr"]  # a fixed scale ignores lambda
        torch.testing.assert_close(fixed, 0.5 * diag.var(-1).mean(), rtol=1e-6, atol=1e-9)


def test_glscl_aux_losses_match_naive():
    head = _head("glscl")
    s, w, wm, f, fm = _inputs(bt=4, bv=4, seed=5)
    with torch.no_grad():
        got = head.aux_losses(s, w, wm, f, fm, scale=torch.tensor(1.0))
        assert set(got) == set(head.aux_loss_names) == {"icl", "idl"}
        c_t = torch.stack([_decode_naive(head, w[i][wm[i]]) for i in range(4)])  # [B, Nq, D]
        c_v = torch.stack([_decode_naive(head, f[j][fm[j]]) for j in range(4)])
        nq = c_v.shape[1]
        g = sum(c_v[b] @ c_v[b].T for b in range(4)) / 4
        idl = 0.0
        for k in range(nq):
            for m in range(nq):
                if k != m:
                    idl += max(0.0, 0.1 + g[k, m] - g[k, k]) + max(0.0, 0.1 + g[k, m] - g[m, m])
        idl = 1e-4 * idl / (nq * (nq - 1))
        cross = sum(c_v[b] @ c_t[b].T for b in range(4)) / nq
        icl = ((c_v.mean(0) - c_t.mean(0)) ** 2).mean() + 0.005 * ((cross.diagonal() - 0.75) ** 2).sum()
    torch.testing.assert_close(got["idl"], torch.as_tensor(idl, dtype=torch.float64), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(got["icl"], icl, rtol=1e-6, atol=1e-10)


def test_glscl_score_weights_local_part():
    head = _head("glscl")
    with torch.no_grad():
        score, parts = head(*_inputs())
    torch.testing.assert_close(score, parts[..., 0] + 0.5 * parts[..., 1])


def test_flops_order_at_paper_sizes():
    # at the paper's sizes the pairwise heads order as expected; GLSCL's decoder cost is per sample, not per pair
    cost = {n: get_head_class(n).flops(128, 128, 32, 12, 512) for n in HEADS}
    assert cost["seqtransf"] < cost["xclip"] < cost["xpool"] < cost["tcmgc"]
    assert glscl_flops(1000, 1000, 32, 12, 512) < 2.2 * glscl_flops(500, 500, 32, 12, 512)  # ~linear, not x4


def _batch(image_size: int, b: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 4000, (b, 8), generator=g)
    tokens[:, 0] = 49406
    for i, n in enumerate(torch.randint(3, 9, (b,), generator=g).tolist()):
        tokens[i, n - 1] = 49407
        tokens[i, n:] = 0
    frames = torch.randint(0, 256, (b, 4, 3, image_size, image_size), generator=g, dtype=torch.uint8)
    frame_mask = torch.ones(b, 4, dtype=torch.bool)
    frame_mask[1, 3:] = False
    frame_mask[4, 2:] = False
    return {"tokens": tokens, "frames": frames, "frame_mask": frame_mask}


@pytest.mark.parametrize("name", HEADS)
def test_one_training_step(name):
    torch.manual_seed(0)
    model = create_model("tiny", head=name, num_frames=4, max_words=8, temporal_layers=1)
    before = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    before["temporal"] = next(model.temporal.parameters()).detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    logs = engine.train_step(model, build_loss(model.head), _batch(model.image_size), opt)
    assert math.isfinite(logs["loss"])
    for aux in model.head.aux_loss_names:
        assert math.isfinite(logs[f"aux/{aux}"]), aux
    assert not torch.equal(before.pop("temporal"), next(model.temporal.parameters()))
    for n, p in model.head.named_parameters():
        assert not torch.equal(before[n], p), n
