from pathlib import Path

import pytest

from glccl.config import ConfigError, RunConfig, flatten, load_config, to_dict

ROOT = Path(__file__).resolve().parent.parent


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
    ("train.use_gpu=maybe", "train.use_gpu"),
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
