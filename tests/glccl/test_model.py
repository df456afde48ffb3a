"""GLCCL model: construction, shapes, masks, consistency of the encode_* paths, one training step on the tiny preset."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from glccl.config import ModelConfig
from glccl.encoders import TemporalTransformer, WeightsError, build_clip
from glccl.model import GLCCL, create_model, create_model_from_config, preset_image_size

K, NW = 12, 32


def _tokens(model: GLCCL, n: int) -> torch.Tensor:
    texts = ["a man plays guitar", "a woman is cooking pasta in a kitchen", "dogs run", "a car drives at night",
             "children play football on a field", "someone types"]
    return model.tokenize(texts[:n])


def _frames(model: GLCCL, b: int, k: int = K, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = model.image_size
    return torch.randint(0, 256, (b, k, 3, s, s), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny", num_frames=K, max_words=NW).eval()


def test_attributes(model):
    assert model.preset == "tiny" and model.embed_dim == 128 and model.image_size == 64
    assert model.max_words == NW and model.num_frames == K and model.mask_padding
    assert model.logit_scale is model.clip.logit_scale
    assert isinstance(model.temporal, TemporalTransformer) and model.temporal.layers == 4
    assert type(model.head).__name__ == "GLCCLHead"
    assert preset_image_size("tiny") == 64 and preset_image_size("vit-b-32") == 224


def test_tokenize(model):
    tokens = model.tokenize(["a dog", "a cat on a mat"])
    assert tokens.shape == (2, NW) and tokens.dtype == torch.long
    assert (tokens[:, 0] == 49406).all()


def test_forward_shapes_and_masks(model):
    tokens = _tokens(model, 3)
    frames = _frames(model, 2)
    frame_mask = torch.ones(2, K, dtype=torch.bool)
    frame_mask[1, 7:] = False
    with torch.no_grad():
        out = model(tokens, frames, frame_mask)
    assert set(out) == {"sentence", "words", "word_mask", "frames", "frame_mask", "logit_scale"}
    assert out["sentence"].shape == (3, 128) and out["words"].shape == (3, NW, 128)
    assert torch.equal(out["word_mask"], tokens != 0)
    assert out["frames"].shape == (2, K, 128) and torch.equal(out["frame_mask"], frame_mask)
    assert out["logit_scale"] is model.logit_scale  # ln λ; the loss exponentiates it
    score, parts = model.score(out["sentence"], out["words"], out["word_mask"], out["frames"], out["frame_mask"])
    assert score.shape == (3, 2) and parts.shape == (3, 2, 4)
    assert torch.isfinite(score).all()
    with torch.no_grad():
        out2 = model(tokens, frames)
    assert out2["frame_mask"].all() and out2["frame_mask"].shape == (2, K)


def test_encode_paths_agree(model):
    tokens = _tokens(model, 2)
    frames = _frames(model, 2)
    mask = torch.ones(2, K, dtype=torch.bool)
    mask[0, 5:] = False
    with torch.no_grad():
        out = model(tokens, frames, mask)
        cached = model.encode_frames(frames, mask)
        video, vmask = model.encode_video(frames, mask)
        again = model.temporal_encode(cached, mask)
        sentence, words, wmask = model.encode_text(tokens)
    assert cached.shape == (2, K, 128)
    torch.testing.assert_close(video, out["frames"])
    torch.testing.assert_close(again, video)
    assert torch.equal(vmask, mask)
    torch.testing.assert_close(sentence, out["sentence"])
    torch.testing.assert_close(words, out["words"])
    assert not torch.allclose(cached, video)  # the temporal encoder did something


class _RecordingHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, sentence, words, word_mask, frames, frame_mask):
        self.seen = (word_mask, frame_mask)
        s = sentence @ frames.mean(1).T
        return s, s.unsqueeze(-1)


@pytest.mark.parametrize("mask_padding", [True, False])
def test_mask_padding_flag(mask_padding):
    torch.manual_seed(0)
    clip = build_clip("tiny")
    head = _RecordingHead()
    m = GLCCL(clip, TemporalTransformer.from_clip(clip, 1), head, preset="tiny", max_words=8, num_frames=4,
              mask_padding=mask_padding)
    wm = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    fm = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    m.score(torch.randn(1, 128), torch.randn(1, 8, 128), wm, torch.randn(1, 4, 128), fm)
    seen_w, seen_f = head.seen  # the model passes the real masks; the head decides how padding counts
    assert torch.equal(seen_w, wm) and torch.equal(seen_f, fm)


@pytest.mark.parametrize("mask_padding", [True, False])
def test_mask_padding_reaches_the_head(mask_padding):
    m = create_model("tiny", head="xclip", num_frames=4, max_words=8, temporal_layers=1, mask_padding=mask_padding)
    assert m.mask_padding is mask_padding and m.head.mask_padding is mask_padding


def test_parameter_groups_partition(model):
    clip_ids = {id(p) for p in model.clip_parameters()}
    rest_ids = {id(p) for p in model.non_clip_parameters()}
    all_ids = {id(p) for p in model.parameters()}
    assert clip_ids and rest_ids and not clip_ids & rest_ids
    assert clip_ids | rest_ids == all_ids
    assert id(model.logit_scale) in clip_ids
    assert id(model.head.global_mat_weight) in rest_ids and id(model.temporal.position_embedding) in rest_ids


@pytest.mark.parametrize("preset,head", [("tiny", "glccl"), ("tiny", "meanp"), ("tiny-rn", "glccl")])
def test_train_step_tiny(preset, head):
    """fwd + bwd + AdamW on 4 captions + 4 videos x 12 frames (timing printed, not asserted)."""
    torch.manual_seed(0)
    m = create_model(preset, head=head, num_frames=K, max_words=NW).train()
    opt = torch.optim.AdamW([{"params": m.clip_parameters(), "lr": 1e-7},
                             {"params": m.non_clip_parameters(), "lr": 1e-4}], weight_decay=0.2)
    tokens, frames = _tokens(m, 4), _frames(m, 4)
    frame_mask = torch.ones(4, K, dtype=torch.bool)
    frame_mask[2, 9:] = False

    def step() -> float:
        out = m(tokens, frames, frame_mask)
        score, _ = m.score(out["sentence"], out["words"], out["word_mask"], out["frames"], out["frame_mask"])
        logits = score * out["logit_scale"].exp()
        target = torch.arange(4)
        loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    step()  # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    print(f"\n[{preset} {head}] train step (fwd+bwd+AdamW, 4 captions, 4x{K} frames): "
          f"{min(times) * 1000:.0f} ms (median {sorted(times)[1] * 1000:.0f} ms), loss {loss:.4f}")
    assert torch.isfinite(torch.tensor(loss))
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("clip.visual.") for n in changed)
    if head == "meanp":  # CLIP4Clip meanP pools CLIP frame features: no temporal encoder at all
        assert not any(n.startswith("temporal.") for n, _ in m.named_parameters())
    else:
        assert any(n.startswith("temporal.") for n in changed)


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = create_model("tiny", head="meanp", num_frames=4, max_words=8, temporal_layers=2).train()
    torch.manual_seed(0)
    b = create_model("tiny", head="meanp", num_frames=4, max_words=8, temporal_layers=2,
                     grad_checkpointing=True).train()
    assert b.temporal.grad_checkpointing and b.clip.transformer.grad_checkpointing
    tokens, frames = _tokens(a, 2)[:, :8], _frames(a, 2, 4)
    for m in (a, b):
        out = m(tokens, frames)
        s, _ = m.score(out["sentence"], out["words"], out["word_mask"], out["frames"], out["frame_mask"])
        s.sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_temporal_layers_zero():
    m = create_model("tiny", head="meanp", num_frames=4, max_words=8, temporal_layers=0).eval()
    frames = _frames(m, 2, 4)
    with torch.no_grad():
        video, _ = m.encode_video(frames)
        torch.testing.assert_close(video, m.encode_frames(frames))
    assert not list(m.temporal.parameters())


def test_pretrained_file_and_temporal_init(tmp_path):
    torch.manual_seed(3)
    src = build_clip("tiny")
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(4)
    m = create_model("tiny", pretrained=str(path), head="seqtransf", num_frames=4, max_words=8, temporal_layers=2)
    for k, v in src.state_dict().items():
        assert torch.equal(m.clip.state_dict()[k], v), k
    # initialisation trick: the temporal encoder starts as a copy of the *loaded* text transformer
    for i in range(2):
        for k, v in src.transformer.resblocks[i].state_dict().items():
            assert torch.equal(m.temporal.resblocks[i].state_dict()[k], v), (i, k)
    assert torch.equal(m.temporal.position_embedding[:77], src.positional_embedding)


def test_from_config_and_errors(tmp_path):
    cfg = ModelConfig(preset="tiny", head="seqtransf", num_frames=6, max_words=10, temporal_layers=1,
                      mask_padding=False)
    m = create_model_from_config(cfg)
    assert (m.num_frames, m.max_words, m.temporal.layers, m.mask_padding) == (6, 10, 1, False)
    with pytest.raises(ValueError, match="unknown preset"):
        create_model("vit-x")
    with pytest.raises(ValueError, match="max_words"):
        create_model("tiny", max_words=100)
    with pytest.raises(ValueError, match="unknown head"):
        create_model("tiny", head="nope")
    with pytest.raises(WeightsError, match="no such file"):
        create_model("tiny", pretrained=str(tmp_path / "missing.pt"))


def test_logit_scale_init():
    torch.manual_seed(0)
    default = create_model("tiny", head="meanp", num_frames=4, max_words=8)
    assert default.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-5)  # CLIP's init
    m = create_model("tiny", head="meanp", num_frames=4, max_words=8, logit_scale_init=30.0)
    assert m.logit_scale.exp().item() == pytest.approx(30.0, rel=1e-5)
    with pytest.raises(ValueError, match="logit_scale_init"):
        create_model("tiny", head="meanp", num_frames=4, max_words=8, logit_scale_init=0.0)
    from glccl.config import ConfigError, load_config

    cfg = load_config({"model": {"preset": "tiny-rn", "logit_scale_init": 30}})
    assert create_model_from_config(cfg.model).logit_scale.exp().item() == pytest.approx(30.0, rel=1e-5)
    with pytest.raises(ConfigError, match="model.logit_scale_init"):
        load_config({"model": {"logit_scale_init": -1}})


def test_freeze_token_embedding_keeps_it_out_of_training():
    """model.freeze_token_embedding: the embedding gets no gradient and no optimiser update; the rest still trains."""
    from glccl import engine
    from glccl.config import load_config
    from glccl.losses import build_loss
    from glccl.optim import build_optimizer

    cfg = load_config({"model": {"preset": "tiny", "head": "glccl", "num_frames": 3, "max_words": 8,
                                 "freeze_token_embedding": True}})
    torch.manual_seed(0)
    model = create_model_from_config(cfg.model)
    emb = model.clip.token_embedding.weight
    assert not emb.requires_grad
    opt = build_optimizer(model, 1e-2, 1.0, 0.2)
    assert all(p is not emb for g in opt.param_groups for p in g["params"])
    before, pos_before = emb.detach().clone(), model.clip.positional_embedding.detach().clone()
    batch = {"tokens": torch.randint(1, 400, (4, 8)), "frames": torch.randint(0, 256, (4, 3, 64, 64, 3), dtype=torch.uint8),
             "frame_mask": torch.ones(4, 3, dtype=torch.bool)}
    engine.train_step(model, build_loss(model.head), batch, opt)
    assert emb.grad is None and torch.equal(emb.detach(), before)
    assert not torch.equal(model.clip.positional_embedding.detach(), pos_before)
