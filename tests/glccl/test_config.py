"""The run-config schema: shipped configs, typed overrides, frozen sections validated at construction, the keys that
moved to ``scaling``, and the schema read as documentation."""

import dataclasses
import json
import pickle
from pathlib import Path

import pytest

from glccl.config import (
    MOVED_KEYS,
    ConfigError,
    ModelConfig,
    RunConfig,
    ScalingConfig,
    describe,
    flatten,
    load_config,
    to_dict,
    upgrade,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert load_config(to_dict(cfg)) == cfg  # dict round trip


def test_paper_settings():
    expect = {"msrvtt": (12, 32, 128, 5), "didemo": (64, 64, 64, 20), "vatex": (12, 32, 128, 5)}
    for name, (frames, words, batch, epochs) in expect.items():
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert (cfg.model.num_frames, cfg.model.max_words, cfg.train.batch_size, cfg.train.epochs) == (
            frames, words, batch, epochs), name
        assert cfg.train.lr == 1e-4 and cfg.train.coef_lr == 1e-3 and cfg.loss.eta == 0.5


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=3e-4", "model.head=meanp", "model.num_frames=8", "train.betas=[0.9, 0.99]",
                             "model.pretrained=null"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.head == "meanp" and cfg.model.num_frames == 8 and cfg.train.betas == (0.9, 0.99)
    assert cfg.model.pretrained is None
    assert flatten(to_dict(cfg))["model.num_frames"] == 8


@pytest.mark.parametrize("override, key", [
    ("model.nope=1", "model.nope"),
    ("nope.x=1", "nope"),
    ("train.epochs=two", "train.epochs"),
    ("train.epochs=0", "train.epochs"),
    ("train.lr=-1", "train.lr"),
    ("model.num_frames=1.5", "model.num_frames"),
    ("scaling.use_gpu=maybe", "scaling.use_gpu"),
    ("data.dataset=kinetics", "data.dataset"),
    ("train.batch_size=63", "train.batch_size"),
    ("loss.eta=-0.1", "loss.eta"),
    ("model=3", "model"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"'{key}" in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(lst)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])


# ---------------------------------------------------------------------------------------------------------------------
# frozen sections, validated at construction


def test_sections_are_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = ModelConfig()


@pytest.mark.parametrize("section, change, message", [
    ("train", {"lr": -1.0}, "config key 'train.lr': must be > 0"),
    ("train", {"lr": "fast"}, "config key 'train.lr': expected a number"),
    ("model", {"num_frames": 0}, "config key 'model.num_frames': must be >= 1"),
    ("model", {"preset": "vit-x"}, "config key 'model.preset': unknown preset 'vit-x'"),
    ("model", {"head": "glcl"}, "config key 'model.head': unknown head 'glcl'"),
    ("loss", {"eta": -0.5}, "config key 'loss.eta': must be >= 0"),
    ("data", {"decoder": "ffmpeg"}, "config key 'data.decoder'"),
    ("scaling", {"num_workers": 0}, "config key 'scaling.num_workers': must be >= 1"),
    ("scaling", {"use_gpu": "yes"}, "config key 'scaling.use_gpu': expected true/false"),
])
def test_replace_validates_with_the_dotted_key(section, change, message):
    cfg = load_config(None)
    with pytest.raises(ConfigError) as e:
        dataclasses.replace(getattr(cfg, section), **change)
    assert message in str(e.value)


def test_replace_normalises_and_cross_checks_the_run():
    cfg = load_config(None)
    train = dataclasses.replace(cfg.train, lr=1, betas=[0.8, 0.9])
    assert isinstance(train.lr, float) and train.betas == (0.8, 0.9)
    with pytest.raises(ConfigError, match=r"'train\.batch_size': 7 is not divisible by scaling\.num_workers=2"):
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=7))
    with pytest.raises(ConfigError, match=r"'train\.batch_size': 128 is not divisible by scaling\.num_workers=3"):
        dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, num_workers=3))
    ok = dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, num_workers=4))
    assert ok.scaling.num_workers == 4 and ok.train.batch_size == 128


def test_every_model_preset_is_accepted():
    from glccl.model import list_presets

    for preset in list_presets():
        assert load_config(None, [f"model.preset={preset}"]).model.preset == preset
    with pytest.raises(ConfigError, match=r"'model\.preset'.*known: " + ", ".join(list_presets())):
        load_config(None, ["model.preset=vit-l-14"])


def test_a_config_survives_pickling_and_json():
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["model.head_args.temperature=2.0"])
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # Ray ships configs to workers and trials
    assert load_config(json.loads(json.dumps(to_dict(cfg)))) == cfg


# ---------------------------------------------------------------------------------------------------------------------
# keys that moved to `scaling`


@pytest.mark.parametrize("old", sorted(MOVED_KEYS))
def test_a_moved_key_says_where_it_went(old, tmp_path):
    value = "true" if old.endswith("use_gpu") else "1"
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{old}={value}"])
    assert str(e.value) == f"config key '{old}' moved to '{MOVED_KEYS[old]}'"
    path = tmp_path / "old.yaml"
    path.write_text(f"train:\n  epochs: 1\n  {old.split('.')[1]}: {value}\n")
    with pytest.raises(ConfigError, match=f"'{old}' moved to '{MOVED_KEYS[old]}'"):
        load_config(path)


def test_several_moved_keys_are_named_in_one_error():
    with pytest.raises(ConfigError) as e:
        load_config({"train": {"num_workers": 4, "use_gpu": True, "lr": 1e-4}})
    assert "'train.num_workers' moved to 'scaling.num_workers'" in str(e.value)
    assert "'train.use_gpu' moved to 'scaling.use_gpu'" in str(e.value)


def test_a_saved_config_from_before_the_move_is_upgraded():
    old = {"name": "old-run", "train": {"batch_size": 8, "num_workers": 4, "use_gpu": True, "cpus_per_worker": 2,
                                        "max_failures": 0}}
    cfg = load_config(upgrade(old))
    assert cfg.scaling == ScalingConfig(num_workers=4, use_gpu=True, cpus_per_worker=2.0, max_failures=0)
    assert old["train"]["num_workers"] == 4  # the input is left alone
    assert upgrade(to_dict(cfg)) == to_dict(cfg)


def test_the_schema_documents_every_key():
    keys = describe()
    listed = {k.key for k in keys if not k.section}
    assert set(flatten(to_dict(RunConfig()))) | {"model.head_args"} == listed  # a mapping flattens to nothing
    assert all(k.doc for k in keys), [k.key for k in keys if not k.doc]
    lr = next(k for k in keys if k.key == "train.lr")
    assert (lr.type, lr.default) == ("float", 1e-4) and lr.doc.startswith("Learning rate of everything outside CLIP")
    assert [k.key for k in keys if k.section] == ["model", "loss", "data", "train", "scaling"]
