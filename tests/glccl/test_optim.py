import math

import pytest
import torch
from torch import nn

from glccl.optim import build_optimizer, build_scheduler, param_groups, warmup_cosine


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.clip = nn.Module()
        self.clip.proj = nn.Linear(4, 4)
        self.clip.ln_final = nn.LayerNorm(4)
        self.clip.logit_scale = nn.Parameter(torch.tensor(1.0))
        self.head = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


def test_param_groups_lr_and_decay():
    m = Toy()
    groups = {g["name"]: g for g in param_groups(m, lr=1e-4, coef_lr=1e-3, weight_decay=0.2)}
    by_id = {id(p): name for name, g in groups.items() for p in g["params"]}
    assert by_id[id(m.clip.proj.weight)] == "clip_decay"
    assert by_id[id(m.clip.proj.bias)] == "clip_nodecay"
    assert by_id[id(m.clip.ln_final.weight)] == "clip_nodecay"
    assert by_id[id(m.clip.logit_scale)] == "clip_nodecay"  # a CLIP parameter, as in the released code
    assert by_id[id(m.head.weight)] == "new_decay"
    assert by_id[id(m.head.bias)] == by_id[id(m.norm.weight)] == "new_nodecay"
    assert groups["clip_decay"]["lr"] == pytest.approx(1e-7) and groups["new_decay"]["lr"] == 1e-4
    assert groups["clip_decay"]["weight_decay"] == 0.2 and groups["clip_nodecay"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups.values()) == len(list(m.parameters()))


def test_warmup_cosine_shape():
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    assert all(f(i) >= f(i + 1) for i in range(10, 100))


def test_scheduler_drives_optimizer():
    opt = build_optimizer(Toy(), lr=1e-3, coef_lr=0.1, weight_decay=0.2)
    sched = build_scheduler(opt, total_steps=10, warmup_fraction=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(max(g["initial_lr"] for g in opt.param_groups[:1]))
    assert lrs[-1] < lrs[2]
