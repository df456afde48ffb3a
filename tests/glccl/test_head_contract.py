"""The head contract (``glccl.heads.base.SimilarityHead``), checked for every registered head.

Parametrised over ``list_heads()``: a new head is tested here without editing any list.
"""

from __future__ import annotations

import math

import pytest
import torch

from glccl import engine
from glccl.config import ConfigError, load_config
from glccl.heads import SimilarityHead, build_head, get_head_class, list_heads
from glccl.losses import build_loss
from glccl.model import create_model

BT, BV, NW, K, D = 3, 4, 6, 5, 16
SEED = 7
HEADS = list_heads()


def _inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(SEED)
    s = torch.randn(BT, D, generator=g, dtype=dtype)
    w = torch.randn(BT, NW, D, generator=g, dtype=dtype)
    f = torch.randn(BV, K, D, generator=g, dtype=dtype)
    wm = torch.arange(NW)[None] < torch.tensor([NW, 3, 4])[:, None]
    fm = torch.ones(BV, K, dtype=torch.bool)
    fm[1, 2:] = False
    return s, w, wm, f, fm


def _head(name, **kw):
    torch.manual_seed(SEED)
    return build_head(name, num_words=NW, num_frames=K, dim=D, **kw).double().eval()


@pytest.mark.parametrize("name", HEADS)
def test_declared_members(name):
    cls = get_head_class(name)
    assert issubclass(cls, SimilarityHead) and cls.name == name
    assert cls.part_names and all(isinstance(p, str) and p for p in cls.part_names)
    assert len(set(cls.part_names)) == len(cls.part_names)
    assert isinstance(cls.uses_temporal, bool) and isinstance(cls.default_csc, bool)
    assert all(isinstance(n, str) and n for n in cls.aux_loss_names)
    assert cls.release, "every head names the released code it reproduces"
    assert cls.loss_terms()[0] == "infonce"
    assert ("csc" in cls.loss_terms()) == cls.default_csc
    hps = cls.hyperparameters()
    assert not {"num_words", "num_frames", "dim", "mask_padding"} & set(hps)
    for hp in hps.values():  # every declared default fits its declared type
        assert hp.check(hp.default) is None, (hp.name, hp.default)


@pytest.mark.parametrize("name", HEADS)
def test_forward_shapes_and_parts(name):
    head = _head(name)
    with torch.no_grad():
        score, parts = head(*_inputs())
    assert score.shape == (BT, BV) and parts.shape == (BT, BV, len(head.part_names)) == (BT, BV, head.num_parts)
    assert torch.isfinite(score).all() and torch.isfinite(parts).all()


@pytest.mark.parametrize("name", HEADS)
def test_flops_declared_and_grow_with_frames(name):
    a, b = get_head_class(name).flops(8, 8, 32, 12, 512), get_head_class(name).flops(8, 8, 32, 24, 512)
    assert isinstance(a, int) and 0 < a < b


@pytest.mark.parametrize("name", HEADS)
def test_score_pairs_equals_forward_on_the_gathered_pairs(name):
    head = _head(name)
    s, w, wm, f, fm = _inputs()
    index = torch.tensor([[3, 0], [1, 1], [2, 3]])
    with torch.no_grad():
        full_s, full_p = head(s, w, wm, f, fm)
        got_s, got_p = head.score_pairs(s, w, wm, f, fm, index)
    torch.testing.assert_close(got_s, full_s.gather(1, index), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_p, full_p.gather(1, index[..., None].expand(-1, -1, head.num_parts)),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", HEADS)
def test_masked_mode_ignores_what_padding_holds(name):
    s, w, wm, f, fm = _inputs()
    head = _head(name)
    w2, f2 = w.clone(), f.clone()
    w2[~wm] = 1e3
    f2[~fm] = -1e3
    with torch.no_grad():
        for a, b in zip(head(s, w, wm, f, fm), head(s, w2, wm, f2, fm), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", HEADS)
def test_aux_losses_are_the_declared_ones(name):
    head = _head(name)
    s, w, wm, f, fm = _inputs()
    bs = min(BT, BV)  # paired batch: text i describes video i
    out = head.aux_losses(s[:bs], w[:bs], wm[:bs], f[:bs], fm[:bs], scale=torch.tensor(20.0, dtype=torch.float64))
    assert set(out) == set(head.aux_loss_names)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())


@pytest.mark.parametrize("name", HEADS)
def test_every_hyperparameter_can_be_set_from_a_config(name):
    hps = get_head_class(name).hyperparameters()
    for hp in hps.values():
        cfg = load_config(None, [f"model.head={name}", f"model.head_args.{hp.name}={hp.default!r}"
                                 if isinstance(hp.default, str) else f"model.head_args.{hp.name}={_yaml(hp.default)}"])
        assert cfg.model.head_args == {hp.name: hp.default}
    with pytest.raises(ConfigError, match=r"model\.head_args\.no_such_knob.*no such hyperparameter"):
        load_config(None, [f"model.head={name}", "model.head_args.no_such_knob=1"])


def _yaml(value):
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def test_head_args_reach_the_head_and_wrong_types_are_named():
    cfg = load_config(None, ["model.head=glccl", "model.head_args.temperature=3", "model.head_args.glim=mean"])
    from glccl.model import create_model_from_config

    m = create_model_from_config(cfg.model)
    assert m.head.temperature == 3.0 and m.head.glim == "mean"
    with pytest.raises(ConfigError, match=r"model\.head_args\.temperature.*expected float"):
        load_config(None, ["model.head=glccl", "model.head_args.temperature=warm"])
    with pytest.raises(ConfigError, match=r"model\.head.*unknown head 'glcl'"):
        load_config(None, ["model.head=glcl"])
    with pytest.raises(ConfigError, match=r"loss\.csc.*one \(video_sentence\)"):
        load_config(None, ["model.head=xpool", "loss.csc=true"])


@pytest.mark.parametrize("name", HEADS)
def test_one_training_step_with_the_default_loss(name):
    torch.manual_seed(SEED)
    model = create_model("tiny", head=name, num_frames=4, max_words=8, temporal_layers=1)
    g = torch.Generator().manual_seed(SEED)
    tokens = torch.randint(1, 4000, (4, 8), generator=g)
    tokens[:, 0], tokens[:, 5], tokens[:, 6:] = 49406, 49407, 0
    frames = torch.randint(0, 256, (4, 4, 3, model.image_size, model.image_size), generator=g, dtype=torch.uint8)
    batch = {"tokens": tokens, "frames": frames, "frame_mask": torch.ones(4, 4, dtype=torch.bool)}
    loss = build_loss(model.head)
    logs = engine.train_step(model, loss, batch, torch.optim.AdamW(model.parameters(), lr=1e-3))
    assert math.isfinite(logs["loss"])
    assert ("csc" in logs) == ("csc" in model.head.loss_terms())
    assert {k.removeprefix("aux/") for k in logs if k.startswith("aux/")} == set(model.head.aux_loss_names)
