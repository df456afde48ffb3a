"""Pretrained-weight loading: every accepted format round-trips, every failure names the file and the reason."""

from __future__ import annotations

import os
import random
import time

import pytest
import torch

from glccl.encoders import WeightsError, build_clip, load_pretrained, read_state_dict
from glccl.encoders import weights as W
from glccl.tokenizer import tokenize

OPENAI_EXTRA = {"input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
                "vocab_size": torch.tensor(49408)}


def _zero(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _save_torchscript(model: torch.nn.Module, path) -> None:
    """A real TorchScript archive of an open_clip CLIP, with OpenAI's three non-weight entries."""
    saved = {k: model.__dict__.pop(k) for k in OPENAI_EXTRA if k in model.__dict__}  # plain int attributes
    for k, v in OPENAI_EXTRA.items():
        model.register_buffer(k, v.clone())
    try:
        torch.jit.save(torch.jit.script(model), str(path))
    finally:
        for k in OPENAI_EXTRA:
            delattr(model, k)
        model.__dict__.update(saved)


def _save_all_formats(model: torch.nn.Module, folder) -> dict[str, str]:
    sd = model.state_dict()
    paths = {"torchscript": folder / "ViT.pt", "plain": folder / "plain.pth",
             "open_clip": folder / "epoch_3.pt", "safetensors": folder / "w.safetensors"}
    _save_torchscript(model, paths["torchscript"])
    torch.save(sd, paths["plain"])
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()}},
               paths["open_clip"])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(paths["safetensors"]))
    return {k: str(v) for k, v in paths.items()}


# ---------------------------------------------------------------------------------------------------------------------
# fast: tiny preset, every format


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    torch.manual_seed(0)
    src = build_clip("tiny").eval()
    folder = tmp_path_factory.mktemp("tiny_weights")
    return src, _save_all_formats(src, folder), folder


@pytest.mark.parametrize("fmt", ["torchscript", "plain", "open_clip", "safetensors"])
def test_tiny_round_trip(tiny_files, fmt):
    src, paths, _ = tiny_files
    torch.manual_seed(1)
    dst = build_clip("tiny").eval()
    assert load_pretrained(dst, paths[fmt], model_name="glccl-tiny") == paths[fmt]
    _assert_same_weights(src, dst)


def test_torchscript_is_refused_by_weights_only_load(tiny_files):
    # the reason the TorchScript path exists
    _, paths, _ = tiny_files
    with pytest.raises(RuntimeError, match="TorchScript"):
        torch.load(paths["torchscript"], weights_only=True)
    assert "input_resolution" not in read_state_dict(paths["torchscript"])


def test_glccl_checkpoint_with_clip_prefix(tiny_files, tmp_path):
    src, _, _ = tiny_files
    sd = {f"clip.{k}": v for k, v in src.state_dict().items()}
    sd["temporal.position_embedding"] = torch.zeros(77, 128)
    sd["head.global_mat_weight"] = torch.eye(128)
    path = tmp_path / "glccl.pt"
    torch.save({"model": sd, "epoch": 2, "step": 10}, path)
    dst = build_clip("tiny")
    load_pretrained(dst, path)
    _assert_same_weights(src, dst)


def test_logit_scale_shape_is_adapted(tiny_files, tmp_path):
    src, _, _ = tiny_files
    sd = dict(src.state_dict())
    sd["logit_scale"] = sd["logit_scale"].reshape(1)
    torch.save(sd, tmp_path / "w.pt")
    dst = build_clip("tiny")
    load_pretrained(dst, tmp_path / "w.pt")
    assert torch.equal(dst.logit_scale, src.logit_scale)


# ---------------------------------------------------------------------------------------------------------------------
# errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "ViT-B-32.pt"
    with pytest.raises(WeightsError, match="no such file") as e:
        load_pretrained(build_clip("tiny"), path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty") as e:
        load_pretrained(build_clip("tiny"), path)
    assert str(path) in str(e.value)


def test_garbage_file(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    path.write_bytes(random.Random(0).randbytes(4096))  # seeded: the same garbage on every run
    with pytest.raises(WeightsError, match="not a readable weight file") as e:
        load_pretrained(build_clip("tiny"), path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("fmt", ["plain", "torchscript", "safetensors"])
def test_truncated_file(tiny_files, tmp_path, fmt):
    _, paths, _ = tiny_files
    data = open(paths[fmt], "rb").read()
    path = tmp_path / os.path.basename(paths[fmt])
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated") as e:
        load_pretrained(build_clip("tiny"), path)
    assert str(path) in str(e.value)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="not a state dict") as e:
        load_pretrained(build_clip("tiny"), path)
    assert str(path) in str(e.value)
    torch.save({"epoch": 1, "args": "x"}, path)
    with pytest.raises(WeightsError, match="holds no tensors"):
        load_pretrained(build_clip("tiny"), path)


def test_missing_and_unexpected_keys(tiny_files, tmp_path):
    src, _, _ = tiny_files
    sd = dict(src.state_dict())
    del sd["ln_final.weight"]
    sd["text_encoder.extra"] = torch.zeros(3)
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as e:
        load_pretrained(build_clip("tiny"), path, model_name="glccl-tiny")
    msg = str(e.value)
    assert str(path) in msg and "1 model keys are missing from the file, e.g. ln_final.weight" in msg
    assert "1 keys in the file are not in the model, e.g. text_encoder.extra" in msg


def test_unknown_tag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match="not a pretrained tag of ViT-B-32-quickgelu") as e:
        load_pretrained(build_clip("tiny"), "openia", model_name="ViT-B-32-quickgelu")
    assert "openai" in str(e.value)  # lists the known tags


def test_hub_tag_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    t = time.perf_counter()
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE") as e:
        load_pretrained(build_clip("tiny"), "openai", model_name="ViT-B-32-quickgelu", cache_dir=str(tmp_path))
    assert time.perf_counter() - t < 5
    assert "file path" in str(e.value)


def test_hub_tag_unreachable_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(W, "host_reachable", lambda host, *a, **k: False)
    with pytest.raises(WeightsError, match="not reachable"):
        load_pretrained(build_clip("tiny"), "hf-hub:timm/vit_base_patch32_clip_224.openai",
                        cache_dir=str(tmp_path))


def test_host_reachable_times_out_quickly():
    t = time.perf_counter()
    W.host_reachable("10.255.255.1", 443, timeout=0.5)  # non-routable: never answers
    assert time.perf_counter() - t < 2


# ---------------------------------------------------------------------------------------------------------------------
# ViT-B/32 (151 M parameters): the real architecture in every format


@pytest.fixture(scope="module")
def vitb32():
    torch.manual_seed(0)
    return build_clip("vit-b-32").eval()


def test_tiny_weights_into_vit_b_32(vitb32, tiny_files, tmp_path):
    _, paths, _ = tiny_files
    with pytest.raises(WeightsError) as e:
        load_pretrained(vitb32, paths["plain"], model_name="ViT-B-32-quickgelu")
    msg = str(e.value)
    assert paths["plain"] in msg
    assert "keys have mismatched shapes" in msg and "visual.conv1.weight: file [128,3,16,16] vs model [768,3,32,32]" in msg
    assert "missing from the file" in msg and "right preset" in msg


@pytest.mark.slow
def test_vit_b_32_round_trip_all_formats(vitb32, tmp_path):
    paths = _save_all_formats(vitb32, tmp_path)
    os.remove(paths.pop("safetensors"))  # covered by the tiny round trip; saves ~5 s here
    torch.manual_seed(1)
    dst = build_clip("vit-b-32").eval()
    tokens = tokenize(["a person is cooking"], max_words=77)
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref_t, ref_i = vitb32.encode_text(tokens), vitb32.encode_image(image)
    for fmt, path in paths.items():
        _zero(dst)
        load_pretrained(dst, path, model_name="ViT-B-32-quickgelu")
        _assert_same_weights(vitb32, dst)
        if fmt == "torchscript":
            with torch.no_grad():
                assert torch.equal(dst.encode_text(tokens), ref_t)
                assert torch.equal(dst.encode_image(image), ref_i)
        os.remove(path)
