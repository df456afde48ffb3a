"""The gpu tier (``make test-gpu``, i.e. ``pytest -m gpu``): on CUDA the similarity stage, the losses and gradients of
a training step, and the bf16-autocast step the product trains with all match the CPU reference for the tiny preset.
Skipped (tests/conftest.py) where no CUDA device is visible, and left out of ``make test``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from glccl import engine
from glccl.heads import build_head, list_heads
from glccl.losses import build_loss
from glccl.model import create_model
from glccl.similarity import similarity_matrix

pytestmark = pytest.mark.gpu

DEVICE = torch.device("cuda")
SEEDS = [0, 1]  # fixed: a failure reproduces
STEP_HEADS = ["glccl", "meanp"]  # no dropout in train mode, so both devices compute the same function


@pytest.fixture(autouse=True)
def _full_fp32():
    """fp32 means fp32 here: TF32 (cuDNN's default for convolutions) keeps only 10 mantissa bits, ~1e-3 error."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _features(seed: int, nt: int = 37, nv: int = 29, nw: int = 8, k: int = 6, d: int = 32):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, nw + 1, (nt, 1), generator=g)
    text = {"sentence": torch.randn(nt, d, generator=g), "words": torch.randn(nt, nw, d, generator=g),
            "word_mask": torch.arange(nw)[None] < lengths}
    frame_mask = torch.rand(nv, k, generator=g) < 0.8
    frame_mask[:, 0] = True
    video = {"frames": torch.randn(nv, k, d, generator=g), "frame_mask": frame_mask}
    return text, video, g


def _to(features: dict, device: torch.device, dtype: torch.dtype | None = None) -> dict:
    return {k: v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
            for k, v in features.items()}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list_heads())
def test_similarity_stage_on_cuda_matches_cpu(name, seed):
    """Blocked N x M scores and parts of every head, fp32 on CUDA against float64 on the CPU."""
    text, video, g = _features(seed)
    nw, k, d = text["words"].shape[1], video["frames"].shape[1], text["sentence"].shape[1]
    torch.manual_seed(seed)
    head = build_head(name, num_words=nw, num_frames=k, dim=d).eval()
    with torch.no_grad():  # off the identity initialisation, so that every term of the head matters
        for n, p in head.named_parameters():
            if (p.dim() == 2 and p.shape[0] == p.shape[1] and "decoder" not in n) or "norm" in n:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    ref, ref_parts = similarity_matrix(copy.deepcopy(head).double(), _to(text, "cpu", torch.float64),
                                       _to(video, "cpu", torch.float64), text_chunk=16, video_chunk=8,
                                       return_parts=True)
    got, got_parts = similarity_matrix(copy.deepcopy(head).to(DEVICE), _to(text, DEVICE), _to(video, DEVICE),
                                       text_chunk=16, video_chunk=8, return_parts=True)
    assert got.device.type == DEVICE.type and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu().double(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_parts.cpu().double(), ref_parts, rtol=1e-4, atol=1e-4)


def _batch(model, seed: int, b: int = 6, words: int = 8, frames: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 4000, (b, words), generator=g)
    tokens[:, 0] = 49406
    for i, n in enumerate(torch.randint(3, words + 1, (b,), generator=g).tolist()):
        tokens[i, n - 1], tokens[i, n:] = 49407, 0
    size = model.image_size
    pixels = torch.randint(0, 256, (b, frames, 3, size, size), generator=g, dtype=torch.uint8)
    frame_mask = torch.ones(b, frames, dtype=torch.bool)
    frame_mask[2, 3:] = False
    return {"tokens": tokens, "frames": pixels, "frame_mask": frame_mask}


def _model_pair(head: str, seed: int):
    torch.manual_seed(seed)
    cpu = create_model("tiny", head=head, num_frames=4, max_words=8, temporal_layers=1)
    return cpu, copy.deepcopy(cpu).to(DEVICE)


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.detach().flatten().double().cpu() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("head", STEP_HEADS)
def test_losses_and_gradients_on_cuda_match_cpu(head, seed):
    """fp32 forward, losses and backward of the tiny model: the same numbers on both devices (measured on the CPU
    against float64, fp32 is ~5e-6 off in gradient norm; the bounds leave room for other kernels' sum orders)."""
    cpu, gpu = _model_pair(head, seed)
    batch = _batch(cpu, seed)
    loss_fn = build_loss(cpu.head)
    cpu.train()
    gpu.train()
    ref = engine.compute_losses(cpu, loss_fn, batch)
    ref["loss"].backward()
    got = engine.compute_losses(gpu, copy.deepcopy(loss_fn).to(DEVICE), {k: v.to(DEVICE) for k, v in batch.items()})
    got["loss"].backward()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert float(got[k].detach()) == pytest.approx(float(v.detach()), rel=1e-4, abs=1e-5), k
    g_ref, g_got = _grads(cpu), _grads(gpu)
    assert g_ref.shape == g_got.shape and bool(torch.isfinite(g_got).all())
    assert float((g_got - g_ref).norm() / g_ref.norm()) < 2e-4


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("head", STEP_HEADS)
def test_bf16_autocast_train_step_tracks_fp32_cpu(head, seed):
    """``engine.train_step`` on CUDA runs under bf16 autocast; its loss and gradient stay close to the fp32 CPU step
    (bf16 CPU autocast, as a stand-in, is ~0.004 off in loss and 0.999 in gradient cosine) and the step updates the
    same parameters."""
    cpu, gpu = _model_pair(head, seed)
    batch = _batch(cpu, seed)
    before = {n: p.detach().clone() for n, p in cpu.named_parameters()}
    logs = {}
    for name, model, b in (("cpu", cpu, batch), ("cuda", gpu, {k: v.to(DEVICE) for k, v in batch.items()})):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        # no clipping: the gradients left in .grad are the raw ones on both sides
        logs[name] = engine.train_step(model, build_loss(model.head).to(b["frames"].device), b, opt, grad_clip=0.0)
    assert all(math.isfinite(v) for v in logs["cuda"].values() if isinstance(v, float))
    assert logs["cuda"]["loss"] == pytest.approx(logs["cpu"]["loss"], abs=0.05)
    g_ref, g_got = _grads(cpu), _grads(gpu)
    cosine = float(g_got @ g_ref / (g_got.norm() * g_ref.norm()))
    assert cosine > 0.98 and float((g_got - g_ref).norm() / g_ref.norm()) < 0.25
    for n, p in gpu.named_parameters():
        moved_cpu = not torch.equal(dict(cpu.named_parameters())[n].detach(), before[n])
        assert (not torch.equal(p.detach().cpu(), before[n])) == moved_cpu, n
        assert p.dtype == torch.float32, n  # autocast computes in bf16 but keeps the fp32 master weights


@pytest.mark.parametrize("dtype", ["fp32", "tf32", "bf16"])
def test_similarity_benchmark_measures_on_cuda(dtype):
    """``benchmarks.similarity.measure`` on CUDA: synchronised times, CUDA peak memory, finite GEMM rates."""
    from benchmarks.similarity import measure

    r = measure("glccl", "msrvtt", 64, device="cuda", dtype=dtype, reps=1, max_run_s=30.0, rate_s=0.05)
    assert r["timed"] == 64 and not r["extrapolated"] and r["device"] == "cuda"
    for key in ("wall_s", "cpu_s", "rate_at_run", "cpu_rate_at_run"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert 0 < r["peak_bytes"] < 2e9
