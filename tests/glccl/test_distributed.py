"""N workers (DDP over gloo, video features and score rows all-gathered with gradients) give the same loss and gradients
as one process on the concatenated batch. Real processes and a real process group, no mocks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from glccl import engine
from glccl.losses import build_loss
from glccl.model import create_model
from tests.helpers import free_port

WORLD = 2
B = 6  # global batch: 3 per worker
K, NW = 4, 8


HEAD_KWARGS = {"tcmgc": {"dropout": 0.0}}  # deterministic, so one process and N workers can be compared exactly


SEED = 3141  # fixed: a failure reproduces

def _model(head: str):
    """In float64: the workers sum in a different order than one process (row blocks, gathers), and in float32 that
    alone moves a gradient element by up to ~1e-5 of the tensor's largest one, as much as the float32 reference is
    off from the exact value. In float64 both sides agree to far below the tolerances, so these check the maths."""
    torch.manual_seed(0)
    model = create_model("tiny", head=head, num_frames=K, max_words=NW, temporal_layers=1,
                         head_args=HEAD_KWARGS.get(head, {}))
    return model.double()


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    m = _model("meanp")
    size = m.image_size
    tokens = torch.randint(1, 4000, (B, NW), generator=g)
    tokens[:, 0] = 49406
    lengths = torch.randint(3, NW + 1, (B,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, n - 1] = 49407
        tokens[i, n:] = 0
    frames = torch.randint(0, 256, (B, K, 3, size, size), generator=g, dtype=torch.uint8)
    frame_mask = torch.ones(B, K, dtype=torch.bool)
    frame_mask[1, 3:] = False
    frame_mask[4, 2:] = False
    return {"tokens": tokens, "frames": frames, "frame_mask": frame_mask}


def _grads(model) -> dict[str, torch.Tensor]:
    return {n.removeprefix("module."): p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, head: str, seed: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        core = _model(head)
        seen = []  # (texts, videos) the head scored on this rank
        core.head.register_forward_hook(lambda mod, args, out: seen.append((args[0].shape[0], args[3].shape[0])))
        model = torch.nn.parallel.DistributedDataParallel(core)
        batch = _batch(seed)
        per = B // WORLD
        local = {k: v[rank * per:(rank + 1) * per] for k, v in batch.items()}
        losses = engine.compute_losses(model, build_loss(core.head), local)
        losses["loss"].backward()
        torch.save({"losses": {k: float(v) for k, v in losses.items()}, "grads": _grads(model), "seen": seen},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()



# glccl and meanp: each rank scores its own texts (row blocks of the score matrix); tcmgc has an auxiliary loss, so
# every rank scores the whole global batch from gathered text and video features
@pytest.mark.parametrize("head", ["glccl", "meanp", "tcmgc"])
def test_two_workers_match_one_process(head, tmp_path):
    seed = SEED
    mp.start_processes(_worker, args=(free_port(), head, seed, str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="spawn")
    single = _model(head)
    losses = engine.compute_losses(single, build_loss(single.head), _batch(seed))
    losses["loss"].backward()
    ref = _grads(single)
    assert ref, "no gradients in the single-process reference"
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        if single.head.aux_loss_names:
            assert got["seen"] and all(seen == (B, B) for seen in got["seen"]), got["seen"]
        else:  # each rank scores only its own texts against the whole global batch of videos (1/N of the head's work)
            assert got["seen"] == [(B // WORLD, B)], got["seen"]
        for k, v in losses.items():
            assert got["losses"][k] == pytest.approx(float(v), rel=1e-5, abs=1e-6), (k, seed)
        assert set(got["grads"]) == set(ref), seed
        for name, g in ref.items():
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-6,
                                       msg=lambda m, name=name: f"{name} (seed {seed}): {m}")
