"""``glccl sweep``: Ray Tune sweeps over dotted config keys, with one MLflow parent run per sweep and a child per trial.

    glccl sweep --config sweeps/demo.yaml                       # launch (live table of trials)
    glccl sweep --config sweeps/demo.yaml samples=6 base.train.epochs=2
    glccl sweep --resume demo-sweep                             # continue an interrupted sweep (Tuner.restore)
    glccl runs --sweep demo-sweep                               # compare its trials

A sweep file is a base run config plus a search space over the same dotted keys as ``key=value`` overrides:

    name: demo-sweep
    base: ../configs/demo.yaml          # path (relative to this file) or an inline mapping
    overrides: [train.epochs=3]         # applied to the base
    space:
      loss.eta: {type: uniform, low: 0.1, high: 0.9}
      model.num_frames: {type: choice, values: [8, 12]}
      train.lr: {type: loguniform, low: 3.0e-4, high: 3.0e-3}
    metric: val/t2v/R@1
    mode: max
    samples: 4
    time_budget_s: 0                    # 0: no limit
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or {type: fifo}
    search: random                      # random | grid | optuna (when installed)

Each trial runs a ``TorchTrainer`` (the Train V2 pattern with ``TuneReportCallback``) named ``<sweep>-<trial id>``, so a
retried or restored trial resumes its own checkpoints and MLflow run instead of creating a new one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import matplotlib
import ray
import ray.tune
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from glccl.config import (
    MOVED_KEYS,
    ConfigError,
    RunConfig,
    Section,
    _deepcopy,
    flatten,
    from_dict,
    parse_override,
    read_yaml,
    set_dotted,
    to_dict,
    upgrade,
)
from pipelines import ray_session, tracking, train

matplotlib.use("Agg")  # the sweep summary plot is written without a display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

DIST_TYPES = {"uniform": ("low", "high"), "loguniform": ("low", "high"), "choice": ("values",),
              "grid": ("values",), "randint": ("low", "high")}


@dataclass(frozen=True)
class SchedulerConfig(Section):
    """When Tune stops a trial before its last epoch."""

    SECTION = "scheduler"

    type: Literal["asha", "fifo"] = "asha"
    """asha: at each rung (an epoch count) keep the best 1 / reduction_factor of the trials; fifo: every trial runs all
    its epochs."""
    grace_period: int = 1
    """ASHA: epochs every trial runs before it can be stopped (the first rung)."""
    reduction_factor: float = 2.0
    """ASHA: the rungs lie grace_period * reduction_factor ** k epochs in; 1 / reduction_factor of the trials pass each."""
    max_t: int = 0
    """ASHA: the epoch at which a trial still running is stopped. 0: one past the base's last epoch, so a trial that
    survives every rung ends by itself, its test evaluation and model logging included."""

    def validate(self) -> None:
        self.check(self.grace_period >= 1, "grace_period", f"must be >= 1, got {self.grace_period}")
        self.check(self.reduction_factor > 1, "reduction_factor", f"must be > 1, got {self.reduction_factor}")
        self.check(self.max_t >= 0, "max_t", "must be >= 0 (0: one past the last epoch)")
        self.check(not self.max_t or self.max_t >= self.grace_period, "max_t",
                   f"must be >= scheduler.grace_period={self.grace_period}, got {self.max_t}")


@dataclass(frozen=True, kw_only=True)
class SweepConfig(Section):
    """A sweep: a base run config, a search space over its dotted keys, and how Tune searches it."""

    name: str
    """Sweep name: the MLflow parent run, the Tune experiment and the prefix of every trial's run name."""
    base: dict[str, Any] = field(default_factory=dict)
    """The base run config as a mapping; in a sweep file also a path, relative to the file."""
    overrides: tuple[str, ...] = ()
    """``key=value`` overrides applied to the base (``glccl sweep ... base.KEY=VALUE`` adds to them)."""
    space: dict[str, dict[str, Any]]
    """Search space: a dotted config key (or a bundle name) -> a distribution {type: uniform | loguniform | randint
    (low, high) | choice | grid (values)}. A grid or choice may list bundles: mappings of config keys with a label."""
    metric: str = "val/t2v/R@1"
    """The metric the sweep optimises, the search and the scheduler compare trials by and the best trial is picked on."""
    mode: str = "max"
    """max or min: whether a larger ``metric`` is better."""
    samples: int = 4
    """Trials sampled from the space (with grid keys: repetitions of the whole grid)."""
    time_budget_s: float = 0.0
    """Tune stops the whole sweep, running trials included, after this many seconds; 0: no limit."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    search: Literal["random", "grid", "optuna"] = "random"
    """random and grid sample the space as written (``grid`` keys expand to every value); optuna: Optuna's TPE
    (needs optuna installed)."""
    max_concurrent: int = 0
    """0: derived from the cluster's CPUs (or GPUs) and one trial's needs."""
    source: str = ""
    """The sweep file this was read from (set when it is loaded)."""

    def run_config(self, values: dict[str, Any] | None = None, name: str | None = None) -> RunConfig:
        data = _deepcopy(self.base)
        for item in self.overrides:
            set_dotted(data, *parse_override(item))
        for key, value in (values or {}).items():
            if isinstance(value, dict):  # a bundle: several config keys set together, under one label
                for k, v in value.items():
                    if k != "label":
                        set_dotted(data, k, v)
            else:
                set_dotted(data, key, value)
        if name:
            data["name"] = name
        return from_dict(RunConfig, data)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> SweepConfig:
        """A sweep written by :func:`run_sweep` (its ``.sweep.json``, a trial's parameters), also by an older version:
        its base, saved resolved, may hold keys that have moved since."""
        return from_dict(cls, {**data, "base": upgrade(data.get("base") or {})})

    def validate(self) -> None:
        self.check(bool(self.name) and "/" not in self.name, "name", f"must be a non-empty name without '/', got {self.name!r}")
        base = self.run_config()  # the base with its overrides: a bad key or value names itself
        if self.mode not in ("max", "min"):
            raise ConfigError(f"key 'mode' must be max or min, got {self.mode!r}")
        self.check(self.samples >= 1, "samples", f"must be a positive integer, got {self.samples}")
        self.check(self.time_budget_s >= 0, "time_budget_s", "must be >= 0 (0: no limit)")
        self.check(self.max_concurrent >= 0, "max_concurrent", "must be >= 0 (0: derived from the cluster)")
        if self.scheduler.type == "asha" and not self.scheduler.max_t:
            self.check(self.scheduler.grace_period <= base.train.epochs + 1, "scheduler.grace_period",
                       f"must be at most train.epochs + 1 = {base.train.epochs + 1} (or set scheduler.max_t)")
        if not self.space:
            raise ConfigError("key 'space' is empty: give at least one dotted config key to search over")
        known = set(flatten(to_dict(base)))
        for key, spec in self.space.items():
            _check_dist(key, spec)
            if key in known:
                continue
            if key in MOVED_KEYS:
                raise ConfigError(f"space key '{key}' moved to '{MOVED_KEYS[key]}'")
            bundles = spec["values"] if spec["type"] in ("grid", "choice") else None
            if not bundles or not all(isinstance(b, dict) for b in bundles):
                raise ConfigError(f"space key '{key}' is not a config key (e.g. loss.eta, train.lr, model.num_frames) "
                                  f"nor a grid/choice of bundles (mappings of config keys)")
            for b in bundles:
                if not isinstance(b.get("label"), str) or not b["label"]:
                    raise ConfigError(f"every bundle of space key '{key}' needs a 'label' string")
                bad = sorted(k for k in b if k != "label" and not _is_config_key(k, known))
                if bad:
                    raise ConfigError(f"bundle '{b['label']}' of space key '{key}' sets '{bad[0]}', which is not a "
                                      f"config key" + (f" (it moved to '{MOVED_KEYS[bad[0]]}')" if bad[0] in MOVED_KEYS
                                                       else ""))
        # every value the space can produce must make a valid run config
        for key, spec in self.space.items():
            for value in _corner_values(spec):
                try:
                    self.run_config({key: value})
                except ConfigError as e:
                    raise ConfigError(f"space key '{key}' can produce an invalid value {value!r}: {e}") from e


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Read and validate a sweep file; every error names the key and the file."""
    path = Path(path)
    try:
        raw = read_yaml(path)
        for item in overrides or []:
            key, value = parse_override(item)
            if key.startswith("base."):
                text = value if isinstance(value, str) else json.dumps(value)
                raw["overrides"] = [*(raw.get("overrides") or []), f"{key[5:]}={text}"]
            else:
                set_dotted(raw, key, value)
        base = raw.get("base")
        if base is None:
            raw["base"] = {}
        elif isinstance(base, str):
            base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
            if not base_path.is_file() and Path(base).is_file():
                base_path = Path(base)
            raw["base"] = read_yaml(base_path)
        raw["overrides"] = raw.get("overrides") or ()
        raw["source"] = str(path.resolve())
        return from_dict(SweepConfig, raw)
    except ConfigError as e:
        raise ConfigError(f"sweep file {path}: {e}") from None


def _is_config_key(key: str, known: set[str]) -> bool:
    """A flattened config key, or a key under a mapping-valued one (``model.head_args.temperature``)."""
    return key in known or any(key.startswith(k + ".") for k in ("model.head_args",))


def value_label(value: Any) -> str:
    """How a sampled value is named in tags and tables: a bundle by its label, anything else as itself."""
    return str(value["label"]) if isinstance(value, dict) else str(value)


def _check_dist(key: str, spec: Any) -> None:
    if not isinstance(spec, dict) or spec.get("type") not in DIST_TYPES:
        raise ConfigError(f"space key '{key}' needs a mapping with type one of {sorted(DIST_TYPES)}")
    for arg in DIST_TYPES[spec["type"]]:
        if arg not in spec:
            raise ConfigError(f"space key '{key}' ({spec['type']}) is missing '{arg}'")
    if spec["type"] in ("choice", "grid"):
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise ConfigError(f"space key '{key}' has an empty list of values")
    else:
        lo, hi = float(spec["low"]), float(spec["high"])
        if not lo < hi:
            raise ConfigError(f"space key '{key}' needs low < high, got {lo} and {hi}")
        if spec["type"] == "loguniform" and lo <= 0:
            raise ConfigError(f"space key '{key}' is loguniform and needs low > 0")


def _corner_values(spec: dict[str, Any]) -> list[Any]:
    if spec["type"] in ("choice", "grid"):
        return list(spec["values"])
    if spec["type"] == "randint":
        return [int(spec["low"]), int(spec["high"]) - 1]
    return [float(spec["low"]), float(spec["high"])]


def tune_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, spec in space.items():
        t = spec["type"]
        if t == "uniform":
            out[key] = tune.uniform(float(spec["low"]), float(spec["high"]))
        elif t == "loguniform":
            out[key] = tune.loguniform(float(spec["low"]), float(spec["high"]))
        elif t == "randint":
            out[key] = tune.randint(int(spec["low"]), int(spec["high"]))
        elif t == "choice":
            out[key] = tune.choice(list(spec["values"]))
        else:
            out[key] = tune.grid_search(list(spec["values"]))
    return out


# ---------------------------------------------------------------------------------------------------------------------


def _trial(values: dict[str, Any], sweep: dict[str, Any], parent_run_id: str, workdir: str | None = None,
           source: dict[str, str] | None = None) -> None:
    """One trial: a TorchTrainer run named after the trial id, reporting to Tune and to its MLflow child run.

    Tune starts each trial inside its own trial directory; relative paths of the config (``storage: runs``,
    ``data.root``, ``data.cache``, a local ``model.pretrained``) mean the sweep driver's working directory, so the
    trial moves back there (when that directory exists on this node).
    """
    if workdir and os.path.isdir(workdir):
        os.chdir(workdir)

    sc = SweepConfig.from_saved(sweep)
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = sc.run_config(values, name=f"{sc.name}-{trial_id}")
    train.run(cfg, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()],
              extra_tags={"glccl.sweep": sc.name, "glccl.trial_id": trial_id,
                          **{f"sweep.{k}": value_label(v) for k, v in values.items()}})


def trial_cpus(cfg: RunConfig) -> float:
    """CPUs one trial occupies: its training workers plus one for Ray Data decoding.

    A whole CPU for decoding even when a task asks less (``data.decode_cpus``): with two trials packed onto the
    logical CPUs of a private local Ray, a trial's Ray Data budget fell to 0 and its training data stalled.
    """
    return cfg.scaling.num_workers * cfg.scaling.cpus_per_worker + 1.0


def sweep_dir(storage: Path, name: str) -> Path:
    return storage / "tune" / name


def run_sweep(sweep: SweepConfig, address: str | None = None, resume: bool = False) -> dict[str, Any]:
    base = sweep.run_config()
    storage = Path(base.storage).resolve()
    tdir = sweep_dir(storage, sweep.name)
    need = trial_cpus(base)
    ray_session.connect(address, num_cpus=max(2, int(math.ceil(need)) + 1), dashboard=True, object_store_mb=2048)
    uri = tracking.default_tracking_uri(storage)
    tracking.ensure_experiment(uri, base.experiment)  # once, from the driver: SQLite allows one schema writer
    parent_id, resumed = tracking.start_or_resume_run(
        uri, base.experiment, sweep.name, {f"space.{k}": json.dumps(v) for k, v in sweep.space.items()},
        tags={"glccl.sweep_parent": "1"})
    parent = tracking.RunLogger(uri, parent_id)
    if not resumed:
        parent.text(yaml.safe_dump(to_dict(sweep), sort_keys=False), "sweep/sweep.yaml")
    tdir.parent.mkdir(parents=True, exist_ok=True)
    (tdir.parent / f"{sweep.name}.sweep.json").write_text(json.dumps(to_dict(sweep)))
    trainable = tune.with_resources(
        # the trial function only drives its TorchTrainer: a token CPU share (Tune refuses an empty request)
        tune.with_parameters(_trial, sweep=to_dict(sweep), parent_run_id=parent_id,
                             workdir=os.getcwd()), {"CPU": 0.01})
    # mid-epoch checkpoint reports have no validation metric yet; the schedulers skip such results
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    status = "FAILED"
    try:
        if resume:
            tuner = tune.Tuner.restore(str(tdir), trainable, resume_unfinished=True, resume_errored=True)
        else:
            cpus = ray.cluster_resources().get("CPU", 1)
            concurrent = sweep.max_concurrent or max(1, int(cpus // need))
            tuner = tune.Tuner(
                trainable,
                param_space=tune_space(sweep.space),
                tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.samples,
                                            scheduler=_scheduler(sweep), search_alg=_search(sweep),
                                            max_concurrent_trials=concurrent,
                                            time_budget_s=sweep.time_budget_s or None),
                run_config=tune.RunConfig(name=sweep.name, storage_path=str(tdir.parent),
                                          callbacks=[_close_trial_runs(uri, base.experiment, sweep.name)]),
            )
        grid = tuner.fit()
        for result in grid:  # trial processes have ended now: settle their runs once more (see tracking.settle_trial_run)
            trial_id = (result.metrics or {}).get("trial_id")
            if trial_id:  # a trial that never reported was settled by the callback alone
                tracking.settle_trial_run(uri, base.experiment, f"{sweep.name}-{trial_id}", ok=result.error is None)
        summary = _summarise(grid, sweep, parent)
        status = "FINISHED"
        return summary
    finally:
        tracking.end_run(uri, parent_id, status)


def _close_trial_runs(uri: str, experiment: str, sweep_name: str):
    """A Tune callback (pickled with the sweep's state, so a restored sweep keeps it) that settles each trial's MLflow
    run as soon as Tune ends the trial; ``run_sweep`` settles them all once more after the sweep."""

    class CloseTrialRuns(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            tracking.settle_trial_run(uri, experiment, f"{sweep_name}-{trial.trial_id}", ok=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            tracking.settle_trial_run(uri, experiment, f"{sweep_name}-{trial.trial_id}", ok=False)

    return CloseTrialRuns()


def _scheduler(sweep: SweepConfig):
    spec = sweep.scheduler
    if spec.type == "fifo":
        return FIFOScheduler()
    base = sweep.run_config()
    # Rungs count epochs: mid-epoch checkpoint reports carry no validation metric and ASHA skips them. ASHA stops a
    # trial that reaches max_t at once, before its test evaluation and model logging: by default max_t lies one epoch
    # past the last, so a trial that survives every rung ends by itself.
    return ASHAScheduler(time_attr="epoch", max_t=spec.max_t or base.train.epochs + 1,
                         grace_period=spec.grace_period, reduction_factor=spec.reduction_factor)


def _search(sweep: SweepConfig):
    if sweep.search != "optuna":
        return None  # random sampling / grid_search via the param space
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as e:
        raise ConfigError("sweep key 'search': optuna is not installed (pip install optuna)") from e
    return OptunaSearch()


def _summarise(grid, sweep: SweepConfig, parent) -> dict[str, Any]:
    df = grid.get_dataframe()
    cols = [c for c in df.columns if c.startswith("config/") or c.startswith("val/") or c.startswith("test/")
            or c in ("trial_id", "training_iteration")]
    df = df[cols]
    parent.text(df.to_csv(index=False), "sweep/trials.csv")
    out: dict[str, Any] = {"trials": len(df)}
    try:
        best = grid.get_best_result(metric=sweep.metric, mode=sweep.mode, scope="all")
        best_values = {k: v for k, v in best.config.items()}
        best_metrics = {k: v for k, v in (best.metrics or {}).items() if isinstance(v, (int, float))}
        parent.text(yaml.safe_dump({"config": best_values, "metrics": best_metrics}, sort_keys=False), "sweep/best.yaml")
        parent.metrics({f"best/{k}": v for k, v in best_metrics.items() if "/" in k}, step=0)
        for k, v in best_values.items():
            parent.tag(f"best.{k}", str(v))
        out.update(best_config=best_values, best_metrics=best_metrics)
    except RuntimeError:
        out.update(best_config=None, best_metrics=None)
    keys = [f"config/{k}" for k in sweep.space if f"config/{k}" in df.columns]
    metric_col = sweep.metric if sweep.metric in df.columns else None
    if keys and metric_col:
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
        for ax, key in zip(axes[0], keys):
            d = df[[key, metric_col]].dropna()  # trials stopped before reporting the metric have none
            x = d[key].astype(str) if d[key].dtype == object else d[key]
            ax.scatter(x, d[metric_col])
            ax.set_xlabel(key.removeprefix("config/"))
            ax.set_ylabel(sweep.metric)
            if sweep.space[key.removeprefix("config/")]["type"] == "loguniform":
                ax.set_xscale("log")
        fig.tight_layout()
        parent.figure(fig, "sweep/metric_vs_params.png")
        plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="glccl sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="sweep file (sweeps/*.yaml)")
    g.add_argument("--resume", metavar="NAME", help="continue the interrupted sweep NAME")
    p.add_argument("--storage", default="runs", help="with --resume: the runs/ folder of the sweep")
    p.add_argument("--address", default=None)
    p.add_argument("overrides", nargs="*", help="sweep keys (samples=6) or base config keys (base.train.epochs=2; `glccl config --list` lists them)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.resume:
            saved = Path(args.storage).resolve() / "tune" / f"{args.resume}.sweep.json"
            if not saved.is_file():
                raise ConfigError(f"no sweep named {args.resume!r} under {saved.parent}")
            sweep = SweepConfig.from_saved(json.loads(saved.read_text()))
        else:
            sweep = load_sweep(args.config, args.overrides)
    except ConfigError as e:
        print(f"glccl sweep: {e}", file=sys.stderr)
        return 2
    out = run_sweep(sweep, address=args.address, resume=bool(args.resume))
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
