"""InfoNCE, CSC and RetrievalLoss against hand computations and brute force."""

from __future__ import annotations

import math

import pytest
import torch

from glccl.heads import get_head_class
from glccl.losses import RetrievalLoss, build_loss, csc_loss, info_nce, loss_recipe

SEED = 4321  # fixed: a failure reproduces

def _rng():
    seed = SEED
    return seed, torch.Generator().manual_seed(seed)


def test_info_nce_hand_computed_2x2():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    rows = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(math.exp(3) / (math.exp(1) + math.exp(3)))) / 2
    cols = -(math.log(math.exp(2) / (math.exp(2) + math.exp(1))) + math.log(math.exp(3) / (1 + math.exp(3)))) / 2
    assert info_nce(logits).item() == pytest.approx((rows + cols) / 2, rel=1e-6)


def test_info_nce_brute_force():
    seed, g = _rng()
    logits = torch.randn(6, 6, generator=g, dtype=torch.float64) * 3
    b = logits.shape[0]
    rows = sum(-logits[i, i] + torch.logsumexp(logits[i], 0) for i in range(b)) / b
    cols = sum(-logits[j, j] + torch.logsumexp(logits[:, j], 0) for j in range(b)) / b
    torch.testing.assert_close(info_nce(logits), (rows + cols) / 2, msg=lambda m: f"seed={seed}: {m}")
    with pytest.raises(ValueError):
        info_nce(torch.zeros(2, 3))


def test_csc_hand_computed_b2():
    # P = 3 scores; variances (unbiased): pair (0,0): var(1,2,3)=1; (1,1): var(0,0,0)=0; (0,1): var(0,2,4)=4;
    # (1,0): var(1,1,4)=3. CSC = mean(1, 0) / mean(4, 3) = 0.5 / 3.5.
    parts = torch.tensor([[[1.0, 2, 3], [0, 2, 4]], [[1, 1, 4], [0, 0, 0]]])
    assert csc_loss(parts).item() == pytest.approx(0.5 / 3.5, rel=1e-6)


def test_csc_brute_force_b3_and_scale_invariance():
    seed, g = _rng()
    parts = torch.randn(3, 3, 4, generator=g, dtype=torch.float64)

    def var(x):
        m = sum(x) / len(x)
        return sum((v - m) ** 2 for v in x) / (len(x) - 1)

    v = [[var(parts[i, j].tolist()) for j in range(3)] for i in range(3)]
    num = sum(v[i][i] for i in range(3)) / 3
    den = sum(v[i][j] for i in range(3) for j in range(3) if i != j) / 6  # true mean over B(B-1) negatives
    assert csc_loss(parts).item() == pytest.approx(num / den, rel=1e-12), f"seed={seed}"
    for c in (1e-3, 7.0, -2.5):
        assert csc_loss(c * parts).item() == pytest.approx(num / den, rel=1e-9), f"seed={seed} c={c}"
    assert csc_loss(parts + 5.0).item() == pytest.approx(num / den, rel=1e-9), f"seed={seed}"  # shift invariant too


def test_csc_input_checks():
    with pytest.raises(ValueError):
        csc_loss(torch.zeros(3, 3, 1))
    with pytest.raises(ValueError):
        csc_loss(torch.zeros(1, 1, 4))


def test_retrieval_loss_combines_terms_and_clamps_only_when_asked():
    seed, g = _rng()
    score = torch.randn(5, 5, generator=g)
    parts = torch.randn(5, 5, 4, generator=g)
    out = RetrievalLoss(eta=0.5)(score, parts, torch.tensor(math.log(20.0)))
    torch.testing.assert_close(out["nce"], info_nce(20.0 * score))
    torch.testing.assert_close(out["csc"], csc_loss(parts))
    torch.testing.assert_close(out["loss"], out["nce"] + 0.5 * out["csc"])
    # the release clamps the parameter after the step, not inside the loss: lambda = 1000 is used as it is
    unclamped = RetrievalLoss(eta=0.5, logit_scale_max=100.0)(score, parts, torch.tensor(math.log(1000.0)))
    torch.testing.assert_close(unclamped["nce"], info_nce(1000.0 * score))
    clamped = RetrievalLoss(eta=0.5, logit_scale_max=100.0, clamp_in_loss=True)(score, parts,
                                                                               torch.tensor(math.log(1000.0)))
    torch.testing.assert_close(clamped["nce"], info_nce(100.0 * score))
    # without CSC the loss is InfoNCE alone and no csc term is reported
    o = RetrievalLoss(eta=0.5, csc=False)(score, parts, torch.tensor(0.0))
    assert "csc" not in o and RetrievalLoss(csc=False).terms == ("infonce",)
    torch.testing.assert_close(o["loss"], o["nce"])
    with pytest.raises(ValueError, match="two or more"):
        RetrievalLoss(csc=True)(score, parts[..., :1], torch.tensor(0.0))


def test_logit_scale_gradient_at_the_bound():
    seed, g = _rng()
    score = torch.randn(6, 6, generator=g)
    parts = torch.randn(6, 6, 4, generator=g)
    grads = {}
    for clamp in (False, True):
        ls = torch.tensor(math.log(100.0), requires_grad=True)  # exactly at the bound
        RetrievalLoss(clamp_in_loss=clamp)(score * 1.01, parts, ls * 1.0 + 1e-9)["loss"].backward()
        grads[clamp] = float(ls.grad)
    assert grads[False] != 0.0, f"seed={seed}: the default must keep the logit-scale gradient at the bound"
    assert grads[True] == 0.0, f"seed={seed}: the in-loss clamp zeroes it"


@pytest.mark.parametrize("head,terms", [
    ("glccl", ("infonce", "csc")), ("xclip", ("infonce",)), ("xpool", ("infonce",)), ("meanp", ("infonce",)),
    ("seqtransf", ("infonce",)), ("glscl", ("infonce", "icl", "idl")), ("tcmgc", ("infonce", "sdr"))])
def test_each_head_trains_with_its_authors_loss(head, terms):
    cls = get_head_class(head)
    assert cls.loss_terms() == terms
    loss = build_loss(cls)
    assert loss.csc == ("csc" in terms)
    assert loss_recipe(cls, loss) == " + ".join(t if t != "csc" else "0.5*csc" for t in terms)


def test_csc_as_an_explicit_ablation():
    assert build_loss(get_head_class("xclip"), csc=True).csc  # CSC on X-CLIP's four parts
    assert not build_loss(get_head_class("glccl"), csc=False).csc  # GLCCL without CSC
    with pytest.raises(ValueError, match="two or more score parts"):
        build_loss(get_head_class("xpool"), csc=True)


def test_gradients_finite():
    seed, g = _rng()
    score = torch.randn(6, 6, generator=g, requires_grad=True)
    parts = torch.randn(6, 6, 4, generator=g, requires_grad=True)
    scale = torch.tensor(math.log(100.0), requires_grad=True)
    out = RetrievalLoss(eta=0.5)(score, parts, scale)
    out["loss"].backward()
    assert torch.isfinite(score.grad).all() and torch.isfinite(parts.grad).all(), f"seed={seed}"
    assert parts.grad.abs().sum() > 0 and torch.isfinite(scale.grad)
