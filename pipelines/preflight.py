"""What a run's config and files can tell before any work starts, checked in the driver before Ray starts and before
an MLflow run is created. Each problem is one :class:`ConfigError` line naming the key (or file) and the reason; the
CLI prints it and exits 2.

    manifest = check_run(cfg, storage)   # paths, splits, batch size, caches, a same-name run's settings
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from glccl.config import ConfigError, RunConfig, flatten, to_dict
from pipelines import data as pdata
from pipelines import run_data, tracking

# settings a run resumed under the same name must share with the run it continues: they decide the model's parameters
# (or what its scores mean), and a checkpoint of one cannot be loaded into the other
RESUME_KEYS = ("model.preset", "model.head", "model.num_frames", "model.max_words", "model.temporal_layers",
               "data.dataset")
RESUME_PREFIXES = ("model.head_args.",)


def check_dir(path: str | os.PathLike, key: str, *, create: bool = False, writable: bool = False) -> Path:
    """``path`` is a folder (made when ``create``), and writable when asked; ``ConfigError`` naming ``key``."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"config key '{key}': {p} is a file, not a folder")
    if not p.exists():
        if not create:
            raise ConfigError(f"config key '{key}': folder {p} does not exist")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"config key '{key}': folder {p} cannot be created ({e.strerror})") from None
    if writable:
        try:
            with tempfile.NamedTemporaryFile(dir=p, prefix=".glccl-write-check-"):
                pass
        except OSError as e:
            raise ConfigError(f"config key '{key}': folder {p} is not writable ({e.strerror})") from None
    return p


def check_file(path: str | os.PathLike, key: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config key '{key}': {p} is a folder, not a file")
    if not p.is_file():
        raise ConfigError(f"config key '{key}': file {p} does not exist")
    return p


def check_paths(cfg: RunConfig) -> None:
    """Every path of the config exists and is of the right kind; storage is writable."""
    dc = cfg.data
    check_dir(cfg.storage, "storage", create=True, writable=True)
    if dc.manifest:
        check_file(dc.manifest, "data.manifest")
    elif dc.dataset != "synth" or Path(dc.root).exists():  # a missing synthetic benchmark is generated
        check_dir(dc.root, "data.root")
    if dc.video_dir:
        check_dir(dc.video_dir, "data.video_dir")
    if dc.cache and Path(dc.cache).exists():
        check_dir(dc.cache, "data.cache")
    pre = cfg.model.pretrained
    if pre and (Path(pre).exists() or os.sep in pre or Path(pre).suffix in (".pt", ".pth", ".bin", ".safetensors")):
        check_file(pre, "model.pretrained")


def check_batch(cfg: RunConfig, manifest: Path) -> None:
    """At least one optimiser step per epoch: the loader drops the last incomplete global batch."""
    pairs = len(pdata.split_items(manifest, cfg.data.train_split)["captions"])
    if pairs < cfg.train.batch_size:
        raise ConfigError(f"config key 'train.batch_size': {cfg.train.batch_size} is larger than the training split "
                          f"{cfg.data.train_split!r} ({pairs} caption-video pairs): no step would run")


def check_frame_cache(cfg: RunConfig) -> None:
    """A frame cache of the run holds frames at the model's input size for every split it has."""
    dc = cfg.data
    size = run_data.image_size(cfg)
    for split in dict.fromkeys([dc.train_split, dc.val_split, dc.test_split]):
        if not (Path(dc.cache) / split / "meta.json").is_file():
            continue  # written by the run
        meta = pdata.read_cache_meta(dc.cache, split)
        if not meta.get("feature_dim") and meta.get("size") != size:
            raise ConfigError(f"config key 'data.cache': split {split!r} of {dc.cache} holds {meta.get('size')} px "
                              f"frames, model.preset {cfg.model.preset} needs {size} px: prepare a cache at this size")


def check_same_name(cfg: RunConfig, storage: Path) -> None:
    """A run of this name that exists (in MLflow) was made with the same model settings: running again resumes its
    checkpoints, which another head, preset or K cannot load."""
    uri = tracking.default_tracking_uri(storage)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return  # no store yet, so no run (and opening one would create it)
    run = tracking.latest_run(uri, cfg.experiment, cfg.name)
    if run is None:
        return
    before = run.data.params
    now = {k: str(v) for k, v in flatten(to_dict(cfg)).items()}
    keys = [k for k in sorted(set(before) | set(now))
            if k in RESUME_KEYS or k.startswith(RESUME_PREFIXES)]
    diff = [k for k in keys if before.get(k) != now.get(k)]
    if diff:
        what = "; ".join(f"{k} was {before.get(k, '(unset)')}, now {now.get(k, '(unset)')}" for k in diff)
        raise ConfigError(f"config key 'name': a run named {cfg.name!r} exists in experiment {cfg.experiment!r} with "
                          f"other model settings ({what}); running it again would resume it: choose another name")


def check_run(cfg: RunConfig, storage: Path) -> Path:
    """Check everything a training run can be checked for without Ray; returns the run's manifest (built here)."""
    check_paths(cfg)
    check_same_name(cfg, storage)
    manifest = run_data.ensure_manifest(cfg.data, storage / cfg.name)
    check_batch(cfg, manifest)
    if cfg.data.cache:
        if not run_data.check_feature_cache(cfg):
            check_frame_cache(cfg)
    return manifest
