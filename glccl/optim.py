"""Optimiser and schedule of the recipe (``JingXiaolun/GLCCL`` ``main_glccl.py``): CLIP at lr*coef_lr, the rest at lr; decoupled weight decay
except biases and norms; 10% linear warm-up then cosine over the total step count.

Deviation from the released code: AdamW (bias-corrected) instead of BertAdam (no bias correction, per-parameter
clip); the global grad-norm clip of ``train_epoch`` is kept (in ``glccl.engine``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _no_decay(name: str, p: torch.Tensor) -> bool:
    lname = name.lower()
    return p.ndim < 2 or "bias" in lname or "norm" in lname or "ln_" in lname or "logit_scale" in lname


def param_groups(model: nn.Module, lr: float, coef_lr: float, weight_decay: float) -> list[dict]:
    """Four groups: {CLIP, rest} x {decay, no decay}. Parameters named ``clip.*`` (logit_scale included) are CLIP's."""
    groups: dict[tuple[bool, bool], list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = name.removeprefix("module.")
        key = (name.startswith("clip."), _no_decay(name, p))  # clip.logit_scale too, as in the released code
        groups.setdefault(key, []).append(p)
    out = []
    for (is_clip, no_decay), params in sorted(groups.items()):
        out.append({
            "params": params,
            "lr": lr * coef_lr if is_clip else lr,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "name": f"{'clip' if is_clip else 'new'}_{'nodecay' if no_decay else 'decay'}",
        })
    return out


def build_optimizer(model: nn.Module, lr: float, coef_lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, lr, coef_lr, weight_decay), betas=betas, eps=eps)


def warmup_cosine(total_steps: int, warmup_fraction: float = 0.1):
    """Multiplier for LambdaLR: linear warm-up over the first ``warmup_fraction`` of steps, then 0.5(1+cos(pi*t))."""
    total = max(1, total_steps)
    warmup = warmup_fraction * total

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1.0, warmup)
        progress = (step - warmup) / max(1.0, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return fn


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_fraction))
