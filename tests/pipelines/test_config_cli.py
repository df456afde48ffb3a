"""``glccl config``: the listing of every run-config key, one section of it, and a resolved config."""

from pathlib import Path

import pytest
import yaml

from pipelines import cli, config_cli
from pipelines.train import parse_args

ROOT = Path(__file__).resolve().parents[2]


def test_config_list_prints_every_key_with_type_default_and_docstring(capsys):
    assert cli.main(["config", "--list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()

    def entry(key):
        i = next(i for i, ln in enumerate(lines) if ln.startswith(f"{key}  ("))
        return lines[i], " ".join(ln.strip() for ln in lines[i + 1:i + 4])

    assert entry("train.lr")[0] == "train.lr  (float, default 0.0001)"
    head, doc = entry("model.num_frames")
    assert head == "model.num_frames  (int, default 12)" and doc.startswith("K: frames sampled per video.")
    assert entry("model.pretrained")[0] == "model.pretrained  (str | None, default null)"
    assert entry("scaling.num_workers")[0] == "scaling.num_workers  (int, default 2)"
    assert "split evenly across them" in entry("scaling.num_workers")[1]
    assert entry("train.betas")[0] == "train.betas  (tuple[float, float], default [0.9, 0.98])"
    assert "Read only by the platform layer" in out
    assert "train.num_workers" not in out and "train.use_gpu" not in out


def test_config_list_of_one_section_and_show(capsys):
    assert config_cli.main(["--list", "scaling"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scaling:") and "scaling.max_failures" in out and "model." not in out
    assert config_cli.main(["--list", "optimiser"]) == 2
    assert config_cli.main(["--show", "--config", str(ROOT / "configs" / "demo.yaml"), "scaling.num_workers=4"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["scaling"]["num_workers"] == 4 and shown["model"]["preset"] == "tiny-rn-32"
    assert config_cli.main(["--show", "train.num_workers=4"]) == 2
    assert "moved to 'scaling.num_workers'" in capsys.readouterr().err


def test_train_help_points_at_the_key_listing(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "glccl config --list" in capsys.readouterr().out
