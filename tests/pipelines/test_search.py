"""Two-stage gallery search (glccl.search) and the ``glccl search`` command, on a tiny random model."""

from __future__ import annotations

import re

import pytest
import torch

from glccl.heads import SimilarityHead
from glccl.model import create_model
from glccl.search import (
    GALLERY_FORMAT,
    Gallery,
    GalleryError,
    build_gallery,
    encoder_fingerprint,
    model_score_fns,
    rerank,
    search,
    search_features,
    shortlist_indices,
    shortlist_recall,
    stage1_scores,
)

QUERIES = ["a red circle moves left", "a blue square", "two dogs play in the snow", "a man cooks"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny", num_frames=4, max_words=16).eval()


@pytest.fixture(scope="module")
def gallery(model):
    g = torch.Generator().manual_seed(1)
    size = model.image_size
    batches = []
    for start in (0, 6, 12):  # 18 videos, the last one half padded
        frames = torch.randint(0, 256, (6, 4, size, size, 3), dtype=torch.uint8, generator=g)
        mask = torch.ones(6, 4, dtype=torch.bool)
        if start == 12:
            mask[-1, 2:] = False
        batches.append({"frames": frames, "frame_mask": mask, "video_index": torch.arange(start, start + 6)})
    ids = [f"vid{i:02d}" for i in range(18)]
    return build_gallery(model, reversed(batches), ids, meta={"split": "test"})


def test_gallery_contents(model, gallery):
    assert len(gallery) == 18 and gallery.video_ids == [f"vid{i:02d}" for i in range(18)]  # sorted by video_index
    assert gallery.frames.shape == (18, 4, model.embed_dim)
    assert not gallery.frame_mask[17, 2:].any()
    assert torch.allclose(gallery.first_stage.norm(dim=-1), torch.ones(18), atol=1e-5)
    assert gallery.meta["fingerprint"] == encoder_fingerprint(model) and gallery.meta["split"] == "test"


def test_full_shortlist_is_the_exhaustive_ranking(model, gallery):
    n = len(gallery)
    ex = search(model, gallery, QUERIES, k=n, exhaustive=True)
    two = search(model, gallery, QUERIES, k=n, shortlist=n)
    big = search(model, gallery, QUERIES, k=n, shortlist=10 * n)
    for a, b, c in zip(ex, two, big):
        assert [v for v, _ in a] == [v for v, _ in b] == [v for v, _ in c]
        assert torch.allclose(torch.tensor([s for _, s in a]), torch.tensor([s for _, s in b]), atol=1e-5)
        assert len(a) == n and len({v for v, _ in a}) == n


def test_two_stage_reranks_the_shortlist_exactly(model, gallery):
    from glccl import engine

    text = engine.encode_texts(model, model.tokenize(QUERIES))
    full = model.score(text["sentence"], text["words"], text["word_mask"], gallery.frames, gallery.frame_mask)[0]
    for stage1 in ("meanp", "glim"):
        cand = shortlist_indices(text["sentence"], gallery, 7, stage1)
        assert cand.shape == (4, 7)
        scores, idx = search_features(model.score, text, gallery, k=3, shortlist=7, stage1=stage1)
        for q in range(4):
            sub = full[q, cand[q]]
            best = cand[q][torch.argsort(sub, descending=True, stable=True)[:3]]
            assert set(idx[q].tolist()) == set(best.tolist())
            assert torch.allclose(scores[q], full[q, idx[q]], atol=1e-5)
            assert bool((scores[q][:-1] >= scores[q][1:]).all())


def test_stage1_scores(gallery):
    torch.manual_seed(3)
    s = torch.randn(5, gallery.dim)
    meanp = stage1_scores(s, gallery, "meanp")
    assert torch.allclose(meanp, torch.nn.functional.normalize(s, dim=-1) @ gallery.first_stage.T, atol=1e-6)
    # GLIM global score against an explicit pooled vector
    glim = stage1_scores(s, gallery, "glim", temperature=5.0, video_chunk=5)
    for j in (0, 17):
        f, m = gallery.frames[j], gallery.frame_mask[j]
        a = torch.softmax((s @ f[m].T) / 5.0, dim=-1)
        v = a @ f[m]
        ref = torch.nn.functional.cosine_similarity(s, v, dim=-1)
        assert torch.allclose(glim[:, j], ref, atol=1e-5)
    with pytest.raises(ValueError, match="stage1"):
        stage1_scores(s, gallery, "bogus")


def test_shortlist_recall():
    ref = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    short = torch.tensor([[0, 9, 2], [8, 5, 7]])
    r = shortlist_recall(short, ref, ks=(1, 2, 4))
    assert r[1] == pytest.approx(0.5)  # query 0 has its top-1 (0), query 1 does not (4)
    assert r[2] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert r[4] == pytest.approx((2 / 4 + 2 / 4) / 2)
    assert shortlist_recall(ref, ref, ks=(1, 4)) == {1: 1.0, 4: 1.0}
    with pytest.raises(ValueError):
        shortlist_recall(short, ref, ks=(5,))


def test_rerank_paths_agree(model, gallery):
    from glccl import engine

    text = engine.encode_texts(model, model.tokenize(QUERIES))
    every = torch.arange(len(gallery)).expand(4, -1).flip(-1)  # any order: re-ranking sorts into gallery order
    score_fn, pair_fn = model_score_fns(model)
    assert pair_fn is not None  # the GLCCL head scores per-query shortlists in one call
    s1, i1 = rerank(score_fn, text, gallery, None, k=5)
    s2, i2 = rerank(score_fn, text, gallery, every, k=5)
    s3, i3 = rerank(score_fn, text, gallery, every, k=5, pair_fn=pair_fn, batch=1)  # one query per call
    s4, i4 = rerank(score_fn, text, gallery, every, k=5, pair_fn=pair_fn)
    for s, i in ((s2, i2), (s3, i3), (s4, i4)):
        assert torch.equal(i1, i)
        assert torch.allclose(s1, s, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    cand = torch.stack([torch.randperm(len(gallery), generator=g)[:6] for _ in range(4)])
    sa, ia = rerank(score_fn, text, gallery, cand, k=3)
    sb, ib = rerank(score_fn, text, gallery, cand, k=3, pair_fn=pair_fn)
    assert torch.equal(ia, ib) and torch.allclose(sa, sb, atol=1e-5)


def test_head_with_the_fallback_score_pairs(gallery):
    torch.manual_seed(0)
    meanp = create_model("tiny", head="meanp", num_frames=4, max_words=16).eval()
    assert type(meanp.head).score_pairs is SimilarityHead.score_pairs  # the per-query fallback of the contract
    g = Gallery(gallery.frames, gallery.frame_mask, gallery.video_ids, meta={"fingerprint": encoder_fingerprint(meanp)})
    ex = search(meanp, g, QUERIES, k=4, exhaustive=True)
    two = search(meanp, g, QUERIES, k=4, shortlist=len(g))
    assert [[v for v, _ in r] for r in ex] == [[v for v, _ in r] for r in two]
    # MeanP's head score is the meanp stage-1 score: a shortlist of k already holds the exhaustive top-k
    assert [[v for v, _ in r] for r in search(meanp, g, QUERIES, k=4, shortlist=4)] == [[v for v, _ in r] for r in ex]


def test_save_load_round_trip(model, gallery, tmp_path):
    path = gallery.save(tmp_path / "g" / "gallery.pt")
    back = Gallery.load(path, model)
    assert back.video_ids == gallery.video_ids and back.meta == gallery.meta
    for name in ("frames", "frame_mask", "first_stage"):
        assert torch.equal(getattr(back, name), getattr(gallery, name))
    assert search(model, back, QUERIES[0], k=5, shortlist=8) == search(model, gallery, QUERIES[0], k=5, shortlist=8)


def test_bad_gallery_files(model, gallery, tmp_path):
    with pytest.raises(GalleryError, match="no such file"):
        Gallery.load(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch file")
    with pytest.raises(GalleryError, match=r"junk\.pt could not be read"):
        Gallery.load(junk)
    good = gallery.save(tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(GalleryError, match="truncated.pt could not be read"):
        Gallery.load(truncated)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(GalleryError, match="not a glccl gallery"):
        Gallery.load(other)
    blob = torch.load(good, weights_only=True)
    torch.save({**blob, "format": "glccl-gallery/999"}, other)
    with pytest.raises(GalleryError, match="format"):
        Gallery.load(other)
    torch.save({**blob, "video_ids": blob["video_ids"][:-1]}, other)
    with pytest.raises(GalleryError, match="video ids"):
        Gallery.load(other)
    torch.save({**blob, "frame_mask": blob["frame_mask"][:, :2]}, other)
    with pytest.raises(GalleryError, match="frame_mask"):
        Gallery.load(other)
    assert blob["format"] == GALLERY_FORMAT


def test_gallery_from_another_encoder_is_refused(model, gallery, tmp_path):
    path = gallery.save(tmp_path / "g.pt")
    torch.manual_seed(123)
    other = create_model("tiny", num_frames=4, max_words=16).eval()
    with pytest.raises(GalleryError, match="different video encoder"):
        Gallery.load(path, other)
    Gallery.load(path)  # without a model nothing is checked


def test_cli_search(model, gallery, tmp_path, capsys):
    from pipelines.search import main

    ckpt = tmp_path / "best_model.pt"
    torch.save({"model": model.state_dict(), "config": _tiny_config()}, ckpt)
    gpath = gallery.save(tmp_path / "gallery.pt")
    assert main(["--checkpoint", str(ckpt), "--gallery", str(gpath), "a red circle", "--k", "3",
                 "--shortlist", "5", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "a red circle" in out and "shortlist of 5 / 18" in out and len(re.findall(r"^ +\d+  vid\d\d ", out, re.M)) == 3
    assert main(["--checkpoint", str(ckpt), "--gallery", str(tmp_path / "nope.pt"), "q"]) == 2
    assert "nope.pt" in capsys.readouterr().err


def _tiny_config() -> dict:
    from glccl.config import load_config

    return load_config({"model": {"preset": "tiny", "num_frames": 4, "max_words": 16, "pretrained": None}}).to_dict()
