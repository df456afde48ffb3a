"""The data of a run, behind one call: :func:`prepare` turns a run config into what training reads.

In order: the manifest (``data.manifest``, or built from the annotations in ``data.root``; the synthetic benchmark is
generated first if it is missing), the cache (a feature cache is checked against the run's frame tower; a missing
frame cache is written once, with Ray Data), the Ray datasets of the three splits, and the tokenised evaluation texts.
``glccl eval`` and ``glccl search`` read one split through :func:`split_dataset`.

    data = prepare(cfg, storage)          # RunData: manifest, datasets, texts, num_train_pairs, frozen_tower
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.data

from glccl.config import ConfigError, DataConfig, RunConfig
from glccl.data import synth
from glccl.data.manifest import UnknownSplitError, build_manifest, check_splits, write_manifest
from glccl.data.report import MissingAnnotationError
from glccl.model import create_model_from_config, preset_image_size
from pipelines import data as pdata


@dataclass(frozen=True)
class RunData:
    manifest: Path
    datasets: dict[str, ray.data.Dataset]
    """train (caption-video pairs, shuffled with ``train.seed``), val and test (videos)."""
    texts: dict[str, dict[str, Any]]
    """val and test: tokens, text_to_video (manifest video index per caption), captions, video_ids."""
    num_train_pairs: int
    frozen_tower: bool
    """``data.cache`` is a feature cache: the frame tower that computed it stays fixed."""
    skips: dict[str, tuple[pdata.SkipLog, int]]
    """train, val, test: the stream's skip log and the number of videos of its split (``pdata.check_skips``)."""


def ensure_synth(root: Path, seed: int = 0) -> None:
    """Generate the default synthetic benchmark in ``root`` unless it is there."""
    if (root / "synth_meta.json").is_file():
        print(f"[glccl] synthetic benchmark found in {root}")
        return
    print(f"[glccl] generating the synthetic benchmark in {root} ...", flush=True)
    t0 = time.perf_counter()
    summary = synth.generate(root, seed=seed)
    print(f"[glccl] generated {summary} in {time.perf_counter() - t0:.1f}s", flush=True)


def _splits(dc: DataConfig) -> list[str]:
    return list(dict.fromkeys([dc.train_split, dc.val_split, dc.test_split]))


def ensure_manifest(dc: DataConfig, run_dir: Path) -> Path:
    """The run's manifest: ``data.manifest`` if given, else built from ``data.root`` for the three splits."""
    if dc.manifest:
        return Path(dc.manifest)
    if dc.dataset == "synth":
        ensure_synth(Path(dc.root))
    tables = {}
    for role in ("train", "val", "test"):
        split = getattr(dc, f"{role}_split")
        if split in tables:
            continue
        try:
            tables[split] = build_manifest(dc.dataset, dc.root, split, video_dir=dc.video_dir)
        except (MissingAnnotationError, UnknownSplitError) as e:  # a typo in a split name, most often
            raise ConfigError(f"config key 'data.{role}_split': no split {split!r} of {dc.dataset} in {dc.root} "
                              f"({e})") from None
    table = pa.concat_tables(list(tables.values()))
    check_run_splits(dc, table, where=f"{dc.dataset} in {dc.root}: ")
    path = run_dir / "manifest.parquet"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(table, path)
    return path


def check_run_splits(dc: DataConfig, table: pa.Table, where: str = "") -> None:
    """The run's three splits are non-empty, and (unless ``data.allow_split_overlap``) share no video with the training
    split; ``SplitError`` otherwise. Validation and test may be one split (MSR-VTT's 1k-A serves as both)."""
    disjoint = () if dc.allow_split_overlap else ((dc.train_split, dc.val_split), (dc.train_split, dc.test_split))
    check_splits(table, _splits(dc), disjoint=disjoint, where=where)


def image_size(cfg: RunConfig) -> int:
    return preset_image_size(cfg.model.preset)


def ensure_frame_cache(dc: DataConfig, manifest: Path, num_frames: int, size: int) -> None:
    """Write the parquet frame cache for the splits that lack one (each video decoded once, with Ray Data)."""
    missing = [s for s in _splits(dc) if not (Path(dc.cache) / s / "meta.json").is_file()]
    if not missing:
        return
    print(f"[glccl] writing the frame cache {dc.cache} for {missing}", flush=True)
    summary = pdata.prepare_cache(manifest, missing, dc.cache, num_frames=num_frames, size=size, decoder=dc.decoder,
                                  timeout_s=dc.decode_timeout_s, strict=dc.strict,
                                  max_skip_fraction=dc.max_skip_fraction, progress=False)
    if summary["exceeded"]:
        raise RuntimeError(f"frame cache {dc.cache}: more than {dc.max_skip_fraction:.0%} of the videos were skipped "
                           f"as bad input (see skipped.json in each split folder)")


def check_feature_cache(cfg: RunConfig) -> bool:
    """Whether ``data.cache`` is a feature cache (``glccl data features``); if so, that every split of the run has one
    and that it was computed by this run's frame tower (``model.pretrained``), else ``ConfigError`` naming the key."""
    dc = cfg.data
    splits = _splits(dc)
    metas = {s: pdata.read_cache_meta(dc.cache, s) for s in splits if (Path(dc.cache) / s / "meta.json").is_file()}
    kinds = {s: bool(m.get("feature_dim")) for s, m in metas.items()}
    if not any(kinds.values()):
        return False
    if len(metas) < len(splits) or not all(kinds.values()):
        missing = [s for s in splits if not kinds.get(s)]
        raise ConfigError(f"config key 'data.cache': {dc.cache} is a feature cache without features for split(s) "
                          f"{', '.join(missing)}: run `glccl data features` for them")
    tower = pdata.tower_fingerprint(create_model_from_config(cfg.model))
    for split, meta in metas.items():
        if meta["tower"]["fingerprint"] != tower:
            raise ConfigError(f"config key 'model.pretrained': the feature cache {Path(dc.cache) / split} was computed "
                              f"by another frame tower (preset {meta['tower']['preset']}); set model.pretrained to the "
                              f"checkpoint the features were computed with")
    return True


def _dataset_args(cfg: RunConfig, size: int) -> dict[str, Any]:
    dc = cfg.data
    return dict(num_frames=cfg.model.num_frames, size=size, max_words=cfg.model.max_words, decoder=dc.decoder,
                cache=dc.cache, num_cpus=dc.decode_cpus, timeout_s=dc.decode_timeout_s, strict=dc.strict,
                batch_size=dc.decode_batch_size)


def skip_log(cfg: RunConfig, split: str, mode: str) -> pdata.SkipLog:
    """A stream's skip log, with the run's limit ``data.max_skip_fraction`` (Ray must be up)."""
    return pdata.SkipLog(stage=f"stream {split}/{mode}", max_fraction=cfg.data.max_skip_fraction)


def split_dataset(cfg: RunConfig, manifest: Path, split: str, size: int) -> ray.data.Dataset:
    """One split's videos (evaluation sampling), decoded or read from ``data.cache``; bad videos are counted in
    ``ds.skip_log`` (check it with ``pdata.check_skips`` once the split has been read)."""
    return pdata.video_dataset(manifest, split, train=False, mode="videos", skip_log=skip_log(cfg, split, "videos"),
                               **_dataset_args(cfg, size))


def num_videos(manifest: Path, split: str) -> int:
    return len(pdata.split_items(manifest, split)["video_ids"])


def eval_texts(manifest: Path, split: str, max_words: int) -> dict[str, Any]:
    tokens, t2v, captions, video_ids = pdata.eval_texts(manifest, split, max_words)
    return {"tokens": tokens.numpy(), "text_to_video": t2v.numpy(), "captions": captions, "video_ids": video_ids}


def prepare(cfg: RunConfig, storage: Path, manifest: Path | None = None) -> RunData:
    """Build (or reuse) the manifest and the cache, then the Ray datasets and the evaluation texts of the run
    (``manifest``: one the driver built already, e.g. when it checked the run before starting Ray)."""
    # The training loop draws its own progress bar; Ray Data's per-operator bars, forwarded from the split coordinator
    # through Ray's log monitor, flood a non-terminal log (~0.5 MB per run) and cost CPU the two workers need.
    # The datasets keep the context they were created with.
    data_ctx = ray.data.DataContext.get_current()
    data_ctx.enable_progress_bars = False
    data_ctx.print_on_execution_start = False
    dc = cfg.data
    manifest = manifest or ensure_manifest(dc, storage / cfg.name)
    features = bool(dc.cache) and check_feature_cache(cfg)
    size = image_size(cfg)
    if dc.cache and not features:
        ensure_frame_cache(dc, manifest, cfg.model.num_frames, size)
    args = _dataset_args(cfg, size)
    datasets = {
        "train": pdata.video_dataset(manifest, dc.train_split, train=True, mode="pairs", seed=cfg.train.seed,
                                     skip_log=skip_log(cfg, dc.train_split, "pairs"), **args),
        "val": split_dataset(cfg, manifest, dc.val_split, size),
        "test": split_dataset(cfg, manifest, dc.test_split, size),
    }
    texts = {key: eval_texts(manifest, split, cfg.model.max_words)
             for key, split in (("val", dc.val_split), ("test", dc.test_split))}
    num_pairs = len(pdata.split_items(manifest, dc.train_split)["captions"])
    splits = {"train": dc.train_split, "val": dc.val_split, "test": dc.test_split}
    skips = {key: (datasets[key].skip_log, num_videos(manifest, split)) for key, split in splits.items()}
    return RunData(manifest=manifest, datasets=datasets, texts=texts, num_train_pairs=num_pairs, frozen_tower=features,
                   skips=skips)
