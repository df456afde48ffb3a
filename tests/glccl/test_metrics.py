"""Retrieval metrics against a sort-based brute force (ties, several captions per video) and toy matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glccl.metrics import recall_at_k_curve, retrieval_metrics, retrieval_ranks

SEED = 2718  # fixed: a failure reproduces

def _rng():
    seed = SEED
    return seed, np.random.default_rng(seed)


def _rank_sorted(scores: np.ndarray, correct: int) -> int:
    """Position of ``correct`` when sorting by score descending with ties placed before the correct item."""
    is_correct = np.zeros(len(scores), dtype=int)
    is_correct[correct] = 1
    order = np.lexsort((is_correct, -scores))  # primary: score desc; ties: others first
    return int(np.nonzero(order == correct)[0][0])


def _brute(sim: np.ndarray, t2v: np.ndarray) -> dict[str, float]:
    nt, nv = sim.shape
    t_ranks = np.array([_rank_sorted(sim[c], t2v[c]) for c in range(nt)])
    v = np.full((nv, nv), -np.inf)  # v[j, j'] = best caption of video j' for query video j
    for c in range(nt):
        for j in range(nv):
            v[j, t2v[c]] = max(v[j, t2v[c]], sim[c, j])
    v_ranks = np.array([_rank_sorted(v[j], j) for j in range(nv)])
    out = {}
    for name, r in (("t2v", t_ranks), ("v2t", v_ranks)):
        for k in (1, 5, 10):
            out[f"{name}/R@{k}"] = 100.0 * np.mean(r < k)
        out[f"{name}/MdR"] = np.median(r) + 1
        out[f"{name}/MnR"] = np.mean(r) + 1
    return out


@pytest.mark.parametrize("nv,caps,levels", [(12, 1, 0), (15, 3, 4), (30, 2, 0), (25, 1, 3)])
def test_against_brute_force(nv, caps, levels):
    seed, rng = _rng()
    if caps == 1:
        t2v = np.arange(nv)
    else:  # 1..caps captions per video, shuffled order
        t2v = np.concatenate([np.full(rng.integers(1, caps + 1), j) for j in range(nv)])
        rng.shuffle(t2v)
    sim = rng.standard_normal((len(t2v), nv))
    if levels:  # heavy ties
        sim = np.round(sim * levels / 3) / levels
    sim[:, 0] = sim[:, 1]  # some exact ties with a neighbour column in every row
    got = retrieval_metrics(sim, t2v)
    ref = _brute(sim, t2v)
    assert set(got) == set(ref)
    for key in ref:
        assert got[key] == pytest.approx(ref[key]), f"seed={seed} {key}"
    # blocked computation: tiny blocks, tensors in float32 give the same ranks
    a = retrieval_ranks(torch.tensor(sim, dtype=torch.float64), torch.tensor(t2v), block=4)
    b = retrieval_ranks(sim, t2v)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), f"seed={seed}"


def test_constant_matrix_gives_zero_recall():
    m = retrieval_metrics(np.ones((10, 10)), np.arange(10))
    assert m["t2v/R@1"] == 0.0 and m["v2t/R@1"] == 0.0
    assert m["t2v/MdR"] == 10.0 and m["t2v/MnR"] == 10.0


def test_perfect_diagonal():
    m = retrieval_metrics(torch.eye(8) + 0.01 * torch.rand(8, 8, generator=torch.Generator().manual_seed(SEED)),
                          torch.arange(8))
    for d in ("t2v", "v2t"):
        assert m[f"{d}/R@1"] == 100.0 and m[f"{d}/MdR"] == 1.0 and m[f"{d}/MnR"] == 1.0


def test_multi_caption_v2t_uses_best_caption():
    # video 0 has captions 0 and 1; caption 1 ranks video 0 first, caption 0 does not.
    sim = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    t2v = np.array([0, 0, 1])
    ranks_t, ranks_v = retrieval_ranks(sim, t2v)
    assert ranks_t.tolist() == [1, 0, 0]
    # v2t: query video 0 -> candidates: video0's captions max(0.1, 0.8)=0.8 vs video1's 0.3 -> rank 0.
    # query video 1 -> video0's captions max(0.9, 0.2)=0.9 vs own 0.7 -> rank 1.
    assert ranks_v.tolist() == [0, 1]


def test_input_checks():
    with pytest.raises(ValueError, match="video 2"):
        retrieval_metrics(np.zeros((3, 3)), [0, 1, 1])
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((3, 3)), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((2, 2), np.nan), [0, 1])


def test_recall_curve_matches_metrics():
    seed, rng = _rng()
    sim = rng.standard_normal((20, 20)) + 2 * np.eye(20)
    curve = recall_at_k_curve(sim, np.arange(20), [1, 5, 10, 20])
    m = retrieval_metrics(sim, np.arange(20))
    assert curve["k"] == [1, 5, 10, 20] and curve["t2v"][3] == 100.0 and curve["v2t"][3] == 100.0
    for i, k in enumerate((1, 5, 10)):
        assert curve["t2v"][i] == m[f"t2v/R@{k}"] and curve["v2t"][i] == m[f"v2t/R@{k}"], f"seed={seed}"
    assert all(np.diff(curve["t2v"]) >= 0)
