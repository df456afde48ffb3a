"""One training step and the evaluation primitives, shared by the Ray pipelines, the benchmarks and the tests.

Everything is plain PyTorch: under Ray Train the process group exists and the gathers are real; in a single process
they are the identity, so the same step gives the same loss and gradients as N workers on the concatenated batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
from torch import nn

from glccl import distributed as gdist

FEATURE_KEYS = ("sentence", "words", "word_mask", "frames", "frame_mask")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; nothing on CPU (fp32 there)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_first(frames: torch.Tensor) -> torch.Tensor:
    """Frames from the data pipeline are ``[B, K, H, W, 3]`` (uint8, as decoded); the model takes ``[B, K, 3, H, W]``."""
    if frames.ndim == 5 and frames.shape[-1] == 3 and frames.shape[2] != 3:
        return frames.permute(0, 1, 4, 2, 3)
    return frames


def gather_features(out: dict[str, torch.Tensor], keys: Iterable[str] = FEATURE_KEYS) -> dict[str, torch.Tensor]:
    """All-gather the per-rank features into the global batch (features keep autograd; masks don't need it).

    All float features travel in one gathered ``[b, sum of widths]`` tensor and all masks in one more: separate
    gathers of features that feed the loss side by side would leave the order of their backward collectives open,
    and ranks that disagree on it exchange the wrong tensors (see ``glccl.distributed.gather_with_grad``).
    """
    keys = list(keys)
    if gdist.world_size() == 1:
        return {k: out[k] for k in keys}
    feats = {}
    for grad, group in ((True, [k for k in keys if out[k].dtype != torch.bool]),
                        (False, [k for k in keys if out[k].dtype == torch.bool])):
        if not group:
            continue
        b = out[group[0]].shape[0]
        widths = [math.prod(out[k].shape[1:]) for k in group]
        flat = torch.cat([out[k].reshape(b, -1) for k in group], dim=1)
        if grad:
            flat = gdist.gather_with_grad(flat)
        else:  # gloo has no bool all_gather
            flat = gdist.gather_no_grad(flat.to(torch.uint8)).bool()
        for k, part in zip(group, flat.split(widths, dim=1)):
            feats[k] = part.reshape(-1, *out[k].shape[1:]).to(out[k].dtype)
    return feats


def shards_scoring(model: nn.Module, allowed: bool = True) -> bool:
    """Whether :func:`compute_losses` scores only this rank's texts (rows of the global matrix) under DDP.

    Every pairwise head qualifies; heads with auxiliary losses (GLSCL, TC-MGC) keep state between scoring and those
    losses, so they score the whole global batch on every rank as before.
    """
    return allowed and gdist.world_size() > 1 and not unwrap(model).head.aux_loss_names


def compute_losses(model: nn.Module, loss_fn: nn.Module, batch: dict[str, torch.Tensor],
                   shard_scores: bool = True) -> dict[str, torch.Tensor]:
    """Forward on the local batch, gather to the global batch, score and compute every loss term.

    ``loss_fn`` is a :class:`glccl.losses.RetrievalLoss` (InfoNCE, and CSC when on); the head's own terms
    (``head.aux_losses``) are added to it, each logged as ``aux/<name>``.

    With N > 1 ranks each rank scores only its own texts against every video of the global batch (a ``[B/N, B]`` row
    block, 1/N of the head's work) and the row blocks are all-gathered with autograd into the global ``[B, B]`` score
    and ``[B, B, P]`` parts. Every rank then computes the same global loss, exactly as if it had scored the whole
    matrix: the gather's backward hands each rank N times the gradient of its own rows, like the feature gathers.
    ``shard_scores=False`` scores the whole global matrix on every rank (the same result; for comparison).
    """
    out = model(batch["tokens"], channels_first(batch["frames"]), batch.get("frame_mask"))
    core = unwrap(model)
    sharded = shards_scoring(model, shard_scores)
    if sharded:
        feats = {**{k: out[k] for k in ("sentence", "words", "word_mask")},
                 **gather_features(out, ("frames", "frame_mask"))}
    else:
        feats = gather_features(out)
    score, parts = core.score(**feats)
    if sharded:  # one gather for both: [B/N, B, 1 + P] row blocks -> [B, B, 1 + P]
        both = gdist.gather_with_grad(torch.cat([score.unsqueeze(-1), parts], dim=-1))
        score, parts = both[..., 0], both[..., 1:]
    losses = dict(loss_fn(score.float(), parts.float(), out["logit_scale"]))
    aux = core.head.aux_losses(**feats, scale=loss_fn.scale(out["logit_scale"])) if core.head.aux_loss_names else {}
    for name, value in aux.items():
        losses[f"aux/{name}"] = value
        losses["loss"] = losses["loss"] + value
    return losses


def train_step(model: nn.Module, loss_fn: nn.Module, batch: dict[str, torch.Tensor],
               optimizer: torch.optim.Optimizer, scheduler=None, *, grad_clip: float = 1.0,
               logit_scale_max: float = 100.0, device: torch.device | None = None,
               shard_scores: bool = True) -> dict[str, float]:
    """One optimiser step on the global batch; returns float logs (loss parts, grad norm, lr, logit scale)."""
    device = device or batch["frames"].device
    model.train()
    with autocast_for(device):
        losses = compute_losses(model, loss_fn, batch, shard_scores=shard_scores)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    params = [p for p in model.parameters() if p.grad is not None]
    gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip > 0 else torch.tensor(0.0)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    core = unwrap(model)
    with torch.no_grad():
        core.logit_scale.clamp_(max=math.log(logit_scale_max))
    logs = {k: float(v.detach()) for k, v in losses.items()}
    logs["grad_norm"] = float(gnorm)
    logs["logit_scale"] = float(core.logit_scale.detach().exp())
    for g in optimizer.param_groups:
        logs[f"lr/{g.get('name', 'group')}"] = g["lr"]
    return logs


@torch.no_grad()
def encode_texts(model: nn.Module, tokens: torch.Tensor, batch_size: int = 256,
                 device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Text features of every caption: sentence [N,D], words [N,L,D], word_mask [N,L] (on CPU, fp32)."""
    core = unwrap(model).eval()
    device = device or next(core.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {"sentence": [], "words": [], "word_mask": []}
    for i in range(0, tokens.shape[0], batch_size):
        with autocast_for(device):
            s, w, m = core.encode_text(tokens[i:i + batch_size].to(device))
        parts["sentence"].append(s.float().cpu())
        parts["words"].append(w.float().cpu())
        parts["word_mask"].append(m.cpu())
    return {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}


@torch.no_grad()
def encode_videos(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                  device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Video features (CLIP + temporal encoder, run once per video) of batches with frames, frame_mask, video_index.

    Returns frames [Nv,K,D], frame_mask [Nv,K], video_index [Nv] (on CPU, fp32), in the order of the batches.
    """
    core = unwrap(model).eval()
    device = device or next(core.parameters()).device
    feats, masks, index = [], [], []
    for b in batches:
        with autocast_for(device):
            f, m = core.encode_video(channels_first(b["frames"]).to(device), b["frame_mask"].to(device))
        feats.append(f.float().cpu())
        masks.append(m.cpu())
        index.append(b["video_index"].cpu().long())
    if not feats:
        return {"frames": torch.empty(0), "frame_mask": torch.empty(0, dtype=torch.bool),
                "video_index": torch.empty(0, dtype=torch.long)}
    return {"frames": torch.cat(feats), "frame_mask": torch.cat(masks), "video_index": torch.cat(index)}
