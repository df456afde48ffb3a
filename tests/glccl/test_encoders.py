"""CLIP feature extractors (text parity with open_clip, uint8 normalisation) and the temporal encoder."""

from __future__ import annotations

import pytest
import torch

from glccl.encoders import (
    OPENAI_MEAN,
    OPENAI_STD,
    TemporalTransformer,
    build_clip,
    embed_dim,
    encode_frames,
    encode_text,
    get_preset,
    image_size,
    list_presets,
)
from glccl.tokenizer import tokenize


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return build_clip("tiny").eval()


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_presets():
    assert {"tiny", "tiny-rn", "tiny-rn-32", "vit-b-32", "vit-b-16"} <= set(list_presets())
    assert get_preset("vit-b-32").open_clip_name == "ViT-B-32-quickgelu"
    assert get_preset("vit-b-16").open_clip_name == "ViT-B-16-quickgelu"
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("vit-h-14")


def test_tiny_preset_shape(clip):
    assert embed_dim(clip) == 128
    assert image_size(clip) == 64
    assert clip.transformer.width == embed_dim(clip)  # the temporal encoder copies text blocks
    assert clip.positional_embedding.shape == (77, 128)


@pytest.mark.parametrize("preset, size", [("tiny-rn", 64), ("tiny-rn-32", 32)])
def test_tiny_rn_presets_encode_frames(preset, size):
    torch.manual_seed(0)
    rn = build_clip(preset).eval()
    assert type(rn.visual).__name__ == "ModifiedResNet"
    assert embed_dim(rn) == 128 and image_size(rn) == size
    frames = torch.randint(0, 256, (2, 3, 3, size, size), dtype=torch.uint8)
    feats, mask = encode_frames(rn, frames)
    assert feats.shape == (2, 3, 128) and bool(mask.all())
    assert torch.isfinite(feats).all() and feats[0, 0].ne(feats[1, 0]).any()


def test_text_shapes_and_mask(clip):
    tokens = tokenize(["a dog runs on the grass", "cat"], max_words=16)
    sentence, words, mask = encode_text(clip, tokens)
    assert sentence.shape == (2, 128) and words.shape == (2, 16, 128) and mask.shape == (2, 16)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, tokens != 0)
    # the sentence is the word feature at the EOT
    eot = tokens.argmax(-1)
    assert torch.equal(sentence, words[torch.arange(2), eot])


def test_text_parity_with_open_clip(clip):
    texts = ["a man is playing a guitar on stage", "two dogs", "someone slices a tomato with a knife"]
    tokens32 = tokenize(texts, max_words=32)
    tokens77 = torch.zeros(3, 77, dtype=torch.long)
    tokens77[:, :32] = tokens32
    with torch.no_grad():
        sentence, words, _ = encode_text(clip, tokens32)
        ref = clip.encode_text(tokens77)
        _, words77, _ = encode_text(clip, tokens77)
    torch.testing.assert_close(sentence, ref, atol=1e-5, rtol=0)
    # causal mask: running at L=32 equals the first 32 positions of a run at 77
    torch.testing.assert_close(words, words77[:, :32], atol=1e-5, rtol=0)


def test_text_too_long(clip):
    with pytest.raises(ValueError, match="context length"):
        encode_text(clip, torch.ones(1, 78, dtype=torch.long))


def test_frames_uint8_equals_manual_normalisation(clip):
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 3, 3, 64, 64), generator=g, dtype=torch.uint8)
    mean = torch.tensor(OPENAI_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 1, 3, 1, 1)
    manual = (frames.float() / 255 - mean) / std
    with torch.no_grad():
        a, mask = encode_frames(clip, frames)
        b, _ = encode_frames(clip, manual)
        ref = clip.encode_image(manual.reshape(6, 3, 64, 64)).reshape(2, 3, -1)
    assert a.shape == (2, 3, 128)
    assert mask.dtype == torch.bool and mask.all()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(b, ref, atol=1e-6, rtol=0)


def test_frame_mask_passes_through(clip):
    frames = torch.zeros(2, 4, 3, 64, 64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        _, out = encode_frames(clip, frames, mask)
    assert torch.equal(out, mask)


def test_frames_bad_input(clip):
    with pytest.raises(ValueError, match="expects 64x64"):
        encode_frames(clip, torch.zeros(1, 2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, K, 3, H, W\]"):
        encode_frames(clip, torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="uint8"):
        encode_frames(clip, torch.zeros(1, 2, 3, 64, 64, dtype=torch.int32))


# ---------------------------------------------------------------------------------------------------------------------
# temporal encoder


def test_temporal_init_copies_text_blocks():
    torch.manual_seed(0)
    clip = build_clip("tiny")
    _perturb(clip)  # stands in for loaded pretrained weights
    tt = TemporalTransformer.from_clip(clip, layers=4)
    assert tt.heads == clip.transformer.resblocks[0].attn.num_heads == 4
    assert tt.width == 128
    text_blocks = clip.transformer.resblocks
    for i in range(len(text_blocks)):  # tiny has 2 text layers: blocks 0, 1 copied, 2, 3 random
        src, dst = text_blocks[i].state_dict(), tt.resblocks[i].state_dict()
        assert src.keys() == dst.keys()
        for k in src:
            assert torch.equal(src[k], dst[k]), k
    assert not torch.equal(tt.resblocks[2].attn.in_proj_weight, text_blocks[0].attn.in_proj_weight)
    assert torch.equal(tt.position_embedding[:77], clip.positional_embedding)
    # copies, not shared storage
    assert tt.position_embedding.data_ptr() != clip.positional_embedding.data_ptr()


def test_temporal_key_padding():
    torch.manual_seed(0)
    tt = TemporalTransformer(width=64, layers=2, heads=4)
    x = torch.randn(3, 6, 64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), 64) * 50
    for train in (True, False):
        tt.train(train)
        with torch.set_grad_enabled(train):
            y, y2 = tt(x, mask), tt(x2, mask)
        torch.testing.assert_close(y[mask], y2[mask], atol=1e-5, rtol=0)
        # without the mask the padded frames do change the real ones
        with torch.set_grad_enabled(train):
            z, z2 = tt(x), tt(x2)
        assert (z[mask] - z2[mask]).abs().max() > 1e-3


def test_temporal_fully_padded_is_finite():
    torch.manual_seed(0)
    tt = TemporalTransformer(width=64, layers=1, heads=2)
    y = tt(torch.randn(2, 4, 64), torch.zeros(2, 4, dtype=torch.bool))
    assert torch.isfinite(y).all()


def test_temporal_residual_and_shapes():
    torch.manual_seed(0)
    tt = TemporalTransformer(width=64, layers=1, heads=2)
    x = torch.randn(2, 5, 64)
    y = tt(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    with pytest.raises(ValueError, match="position table"):
        TemporalTransformer(width=64, layers=1, heads=2, max_positions=4)(x)


def test_temporal_zero_layers_is_identity():
    torch.manual_seed(0)
    tt = TemporalTransformer(width=64, layers=0)
    assert sum(p.numel() for p in tt.parameters()) == 0
    x = torch.randn(2, 5, 64)
    assert tt(x, torch.ones(2, 5, dtype=torch.bool)) is x
    assert TemporalTransformer.from_clip(build_clip("tiny"), layers=0).init_from_clip(build_clip("tiny")) == []


def test_temporal_fp32_under_autocast():
    torch.manual_seed(0)
    tt = TemporalTransformer(width=64, layers=1, heads=2)
    x = torch.randn(2, 5, 64).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = tt(x)
    assert y.dtype == torch.float32


def test_temporal_grad_checkpointing_matches():
    torch.manual_seed(0)
    tt = TemporalTransformer(width=64, layers=2, heads=2)
    x = torch.randn(2, 5, 64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    y = tt(x, mask)
    y.square().sum().backward()
    g_ref = [p.grad.clone() for p in tt.parameters()]
    tt.zero_grad()
    tt.set_grad_checkpointing(True)
    y2 = tt(x, mask)
    y2.square().sum().backward()
    torch.testing.assert_close(y, y2)
    for a, p in zip(g_ref, tt.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)
