"""The sweep schema: a frozen, typed dataclass read by the run config's machinery; every error names the key and the
sweep file."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from glccl.config import ConfigError, load_config, to_dict
from sweeps.tune import SchedulerConfig, SweepConfig, load_sweep

ROOT = Path(__file__).resolve().parents[2]


def _sweep(tmp_path, **body) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": str(ROOT / "configs" / "demo.yaml"),
                                    "space": {"loss.eta": {"type": "uniform", "low": 0.1, "high": 0.9}}, **body}))
    return path


@pytest.mark.parametrize("body, overrides, needle", [
    ({"scheduler": {"type": "hyperband"}}, [], "config key 'scheduler.type': must be one of asha, fifo, got 'hyperband'"),
    ({"scheduler": {"type": "asha", "grace_period": "one"}}, [], "config key 'scheduler.grace_period': expected an "
                                                                  "integer"),
    ({"scheduler": {"type": "asha", "patience": 3}}, [], "unknown key 'scheduler.patience'"),
    ({"scheduler": {"type": "asha", "reduction_factor": 1}}, [], "config key 'scheduler.reduction_factor': must be > 1"),
    ({"scheduler": {"type": "asha", "grace_period": 4, "max_t": 2}}, [], "config key 'scheduler.max_t': must be >= "
                                                                         "scheduler.grace_period=4"),
    ({"search": "bayes"}, [], "config key 'search': must be one of random, grid, optuna, got 'bayes'"),
    ({"samples": "many"}, [], "config key 'samples': expected an integer"),
    ({"samples": 0}, [], "config key 'samples': must be a positive integer"),
    ({"overrides": "train.epochs=2"}, [], "config key 'overrides': expected a list"),
    ({}, ["base.train.num_workers=1"], "config key 'train.num_workers' moved to 'scaling.num_workers'"),
    ({"space": {"train.use_gpu": {"type": "choice", "values": [True, False]}}}, [],
     "space key 'train.use_gpu' moved to 'scaling.use_gpu'"),
    ({}, ["scheduler.type=median"], "config key 'scheduler.type'"),
])
def test_sweep_errors_name_the_key_and_the_file(tmp_path, body, overrides, needle):
    path = _sweep(tmp_path, **body)
    with pytest.raises(ConfigError) as e:
        load_sweep(path, overrides)
    assert str(e.value).startswith(f"sweep file {path}: ")
    assert needle in str(e.value)


def test_sweep_config_is_typed_frozen_and_revalidated(tmp_path):
    sweep = load_sweep(_sweep(tmp_path, scheduler={"type": "asha", "grace_period": 2, "max_t": 3}, search="grid"),
                       ["base.train.epochs=2", "samples=3"])
    assert sweep.scheduler == SchedulerConfig(type="asha", grace_period=2, reduction_factor=2.0, max_t=3)
    assert sweep.search == "grid" and sweep.samples == 3 and sweep.overrides == ("train.epochs=2",)
    assert sweep.run_config().train.epochs == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        sweep.samples = 5
    with pytest.raises(ConfigError, match="'mode' must be max or min"):
        dataclasses.replace(sweep, mode="best")
    with pytest.raises(ConfigError, match=r"'scheduler\.grace_period': must be >= 1"):
        dataclasses.replace(sweep.scheduler, grace_period=0)
    # what run_sweep saves and hands to every trial reads back to the same sweep
    assert SweepConfig.from_saved(json.loads(json.dumps(to_dict(sweep)))) == sweep


def test_a_sweep_saved_before_the_move_still_resumes():
    base = to_dict(load_config(ROOT / "configs" / "demo.yaml"))
    base["train"].update(num_workers=1, cpus_per_worker=1.0)
    del base["scaling"]
    saved = {"name": "old-sweep", "base": base, "space": {"loss.eta": {"type": "uniform", "low": 0.1, "high": 0.9}},
             "metric": "val/t2v/R@1", "mode": "max", "samples": 2, "time_budget_s": 0.0,
             "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}, "search": "random",
             "max_concurrent": 0, "source": "/somewhere/old.yaml"}
    sweep = SweepConfig.from_saved(saved)
    assert sweep.run_config().scaling.num_workers == 1 and sweep.scheduler.type == "asha"
