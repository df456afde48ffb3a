"""The Ray Data pipeline: manifest -> decode + sample in ``map_batches`` -> Ray Train, or -> a parquet frame cache.

Streaming (``video_dataset``)::

    manifest rows of a split (one per caption)
      -> items: one row per video-caption pair (mode="pairs", training; captions tokenised here, on the driver) or per
         video (mode="videos", evaluation), shuffled on the driver when training
      -> map_batches(decode): decode K frames per item (resized at decode time, centre crop);
         bad items are dropped and logged to a SkipLog actor (strict: the first one fails the stream)
      -> rows: frames uint8 [K,S,S,3], frame_mask bool [K], video_index int64 (+ tokens int64 [L], caption_index int64)

The training loop normalises frames itself (``glccl.data.frames.normalize``), so only uint8 crosses the object store::

    it = ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=B, dtypes=TORCH_DTYPES)

Frame cache (``prepare_cache``, ``glccl data prepare``): every video of a split decoded once into parquet files under
``<cache>/<split>/`` (one row group per video, so a row can be read on its own), with ``index.parquet``, ``meta.json``
and ``skipped.json``. ``video_dataset(..., cache=<cache>)`` then reads frames from it instead of decoding.

How training samples frames from a cache: the cache stores ``cache_factor * K`` frames per video (default 3K) at the
centres of 3K equal segments. At read time the usual K indices are drawn (training: a random frame in each of the K
segments; evaluation: the segment centres) and each is snapped to the nearest cached frame. With an odd factor the
middle cached frame of every segment *is* that segment's centre, so evaluation from a cache equals evaluation from the
videos, and training picks one of ``cache_factor`` frames per segment at random. ``cache_factor=1`` caches exactly the
K evaluation frames (training from it then sees fixed frames). Videos with at most ``cache_factor * K`` frames are
cached whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.extensions import ArrowTensorArray
from tqdm import tqdm

from glccl.data.frames import decode_clip, pad_frames, sample_indices, snap_indices
from glccl.data.manifest import read_manifest, select_split, video_order
from glccl.data.report import BadInputError, SkipReport, VideoError

log = logging.getLogger(__name__)

CACHE_FORMAT = "glccl-frame-cache/1"
PAIR_COLUMNS = ("frames", "frame_mask", "tokens", "video_index", "caption_index")
VIDEO_COLUMNS = ("frames", "frame_mask", "video_index")


class _NativeDtypes(dict):
    """A dtypes mapping under which a column it does not name keeps its own dtype (Ray looks every column up)."""

    def __missing__(self, key):
        return None


def torch_dtypes(mode: str = "pairs") -> dict:
    """``dtypes`` for ``iter_torch_batches``. ``frames`` keep their own dtype: uint8 pixels ``[K, S, S, 3]`` from videos
    and frame caches, float32 features ``[K, D]`` from a feature cache."""
    import torch  # lazy: decode workers must not import torch
    d = _NativeDtypes(frame_mask=torch.bool, video_index=torch.int64)
    if mode == "pairs":
        d.update(tokens=torch.int64, caption_index=torch.int64)
    return d


# ---------------------------------------------------------------------------------------------------------------------
# skip log: bad items seen by the decode tasks, gathered in one small actor


def _skip_actor_cls():
    @ray.remote(num_cpus=0)
    class _SkipActor:
        """One per driver session, shared by every SkipLog: entries are kept per log id."""

        def __init__(self):
            self.items: dict[str, dict[tuple[str, str], dict]] = {}
            self.events: dict[str, int] = {}

        def add(self, log_id: str, entries: list[dict]) -> int:
            items = self.items.setdefault(log_id, {})
            for e in entries:
                items.setdefault((e.get("file") or e.get("item", ""), e.get("reason", "")), e)
            self.events[log_id] = self.events.get(log_id, 0) + len(entries)
            return self.events[log_id]

        def get(self, log_id: str) -> tuple[list[dict], int]:
            return list(self.items.get(log_id, {}).values()), self.events.get(log_id, 0)

    return _SkipActor


_SKIP_ACTORS: dict[str, object] = {}


def _shared_skip_actor():
    """The session's skip actor, started once (a new actor per dataset would cost a worker process each time)."""
    key = f"{ray.get_runtime_context().get_session_name()}/{ray.get_runtime_context().get_job_id()}"
    if key not in _SKIP_ACTORS:
        _SKIP_ACTORS.clear()
        _SKIP_ACTORS[key] = _skip_actor_cls().remote()
    return _SKIP_ACTORS[key]


class SkipLog:
    """Collects the items a streaming dataset dropped (each bad file once, however many epochs saw it).

    ``report(total)`` returns a :class:`SkipReport`; ``total`` is the number of items the stream should have had.
    """

    def __init__(self, stage: str = "stream", max_fraction: float = 0.01):
        self.stage = stage
        self.max_fraction = max_fraction
        self.log_id = uuid.uuid4().hex
        self.actor = _shared_skip_actor()

    def add(self, entries: list[dict]) -> None:
        ray.get(self.actor.add.remote(self.log_id, entries))

    def entries(self) -> list[dict]:
        return ray.get(self.actor.get.remote(self.log_id))[0]

    def report(self, total: int | None = None) -> SkipReport:
        entries = self.entries()
        rep = SkipReport(stage=self.stage, max_fraction=self.max_fraction)
        rep.skipped = list(entries)
        rep.ok = max(0, (total if total is not None else len(entries)) - len(entries))
        return rep


def check_skips(skip_log: SkipLog, total: int, split: str) -> SkipReport:
    """The skip report of a stream that has read ``split`` (``total`` videos); :class:`BadInputError` when more than
    ``max_fraction`` of them were skipped as bad input. Training, evaluation and gallery builds call it after a pass."""
    rep = skip_log.report(total)
    if rep.exceeded:
        raise BadInputError(f"split {split!r}: {rep.num_skipped} of {total} videos were skipped as bad input "
                            f"({100 * rep.fraction:.1f} %, above data.max_skip_fraction = "
                            f"{100 * rep.max_fraction:.1f} %): {_reasons(rep)}")
    return rep


def _reasons(rep: SkipReport) -> str:
    first = rep.skipped[0] if rep.skipped else {}
    counts = ", ".join(f"{n} {reason}" for reason, n in rep.by_reason().items())
    return counts + (f" (first: {first.get('file') or first.get('item')})" if first else "")


def _log_skips(skip_log, entries: list[dict]) -> None:
    if not entries:
        return
    for e in entries:
        log.warning("skipped %s: %s %s", e.get("file") or e.get("item"), e.get("reason"), e.get("detail", ""))
    if skip_log is not None:
        skip_log.add(entries)


# ---------------------------------------------------------------------------------------------------------------------
# items


def _table(manifest) -> pa.Table:
    return manifest if isinstance(manifest, pa.Table) else read_manifest(manifest)


def split_items(manifest, split: str) -> dict:
    """The rows of one split with their video and caption indices (the numbering every consumer shares)."""
    t = select_split(_table(manifest), split)
    if t.num_rows == 0:
        raise ValueError(f"the manifest has no rows for split {split!r}")
    vids, vpaths, row_video = video_order(t)
    return {"table": t, "video_ids": vids, "video_paths": vpaths, "row_video_index": np.asarray(row_video, np.int64),
            "captions": t["caption"].to_pylist()}


def eval_texts(manifest, split: str, max_words: int = 32):
    """Evaluation texts of a split as plain tensors.

    Returns ``(tokens LongTensor [Nt, L], text_to_video LongTensor [Nt], captions list[str], video_ids list[str])``;
    ``text_to_video[i]`` is the ``video_index`` (as in ``video_dataset`` rows) of caption ``i``'s video and
    ``video_ids[j]`` is the id of video ``j``.
    """
    import torch  # lazy: decode workers must not import torch

    from glccl.tokenizer import tokenize  # lazy: decode workers must not import torch
    it = split_items(manifest, split)
    tokens = tokenize(it["captions"], max_words)
    return tokens, torch.as_tensor(it["row_video_index"], dtype=torch.int64), it["captions"], it["video_ids"]


def _items(manifest, split: str, mode: str, max_words: int = 32) -> pa.Table:
    from glccl.tokenizer import tokenize  # lazy: decode workers must not import torch
    it = split_items(manifest, split)
    t = it["table"]
    if mode == "pairs":  # captions tokenised here, on the driver: map tasks never import the tokenizer (torch, open_clip)

        tokens = tokenize(it["captions"], max_words).numpy().astype(np.int64)
        return pa.table({
            "video_path": t["video_path"], "video_id": t["video_id"],
            "video_index": pa.array(it["row_video_index"], pa.int64()),
            "caption_index": pa.array(np.arange(t.num_rows, dtype=np.int64)),
            "tokens": ArrowTensorArray.from_numpy(tokens),
        })
    if mode == "videos":
        return pa.table({"video_path": it["video_paths"], "video_id": it["video_ids"],
                         "video_index": pa.array(np.arange(len(it["video_ids"]), dtype=np.int64))})
    raise ValueError(f"mode must be 'pairs' or 'videos', got {mode!r}")


def _blocks(table: pa.Table, rows: int) -> list[pa.Table]:
    rows = max(1, rows)
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)] or [table]


def _task_memory(batch_size: int, num_frames: int, size: int) -> int:
    """Memory reserved per decode task: a worker with torch/open_clip loaded (~0.5 GiB RSS) plus decoder buffers and
    the output batch, with headroom."""
    return int(max(768 * 2**20, 8 * batch_size * num_frames * size * size * 3))


def _empty(num_frames: int, size: int, pairs: bool, max_words: int, feature_dim: int = 0) -> dict[str, np.ndarray]:
    frames = (np.zeros((0, num_frames, feature_dim), np.float32) if feature_dim
              else np.zeros((0, num_frames, size, size, 3), np.uint8))
    out = {"frames": frames, "frame_mask": np.zeros((0, num_frames), bool),
           "video_index": np.zeros(0, np.int64)}
    if pairs:
        out["tokens"] = np.zeros((0, max_words), np.int64)
        out["caption_index"] = np.zeros(0, np.int64)
    return out


def _finish(batch, keep: list[int], frames: list, masks: list, num_frames: int, size: int, max_words: int,
            feature_dim: int = 0):
    pairs = "tokens" in batch
    if not keep:
        return _empty(num_frames, size, pairs, max_words, feature_dim)
    out = {"frames": np.stack(frames), "frame_mask": np.stack(masks),
           "video_index": np.asarray(batch["video_index"], np.int64)[keep]}
    if pairs:  # tokenised on the driver (_items)
        out["tokens"] = np.asarray(batch["tokens"], np.int64)[keep]
        out["caption_index"] = np.asarray(batch["caption_index"], np.int64)[keep]
    return out


DRAW_COLUMN = "_draw"


def _with_draws(ds, seed: int | None):
    """With a seed, a ``DRAW_COLUMN`` of random numbers that Ray Data draws anew on every execution of the dataset
    (every epoch), from the seed, the task and the execution's index (``ray.data.expressions.random`` with
    ``reseed_after_execution``): the same in the same epoch of every run, different from one epoch to the next.
    ``_rng`` seeds a batch's frame sampling from it; the map functions never pass it on."""
    if seed is None:
        return ds
    return ds.with_column(DRAW_COLUMN, ray.data.expressions.random(seed=int(seed), reseed_after_execution=True))


def _rng(seed, batch) -> np.random.Generator:
    """Frame-sampling RNG of one batch: fresh entropy without a seed; with one, a function of the seed, the batch and
    the epoch's draw (``_with_draws``), so epochs differ while runs repeat. Without a draw column (a dataset built
    without ``_with_draws``) the frames repeat every epoch, still reproducibly."""
    if seed is None:
        return np.random.default_rng()
    key = int(batch["caption_index"][0]) if "caption_index" in batch else int(batch["video_index"][0])
    draw = int(float(batch[DRAW_COLUMN][0]) * 2**53) if DRAW_COLUMN in batch else 0  # the float's 53 bits, exactly
    return np.random.default_rng([int(seed), key, draw])


def _decode_batch(batch: dict, *, num_frames: int, size: int, train: bool, max_words: int, decoder: str,
                  timeout_s: float, strict: bool, seed, skip_log) -> dict:
    rng = _rng(seed, batch)
    keep, frames, masks, skips = [], [], [], []
    for i, path in enumerate(batch["video_path"]):
        path = str(path)
        try:
            clip = decode_clip(path, num_frames, size, train=train, rng=rng, decoder=decoder, timeout_s=timeout_s)
        except VideoError as e:
            if strict:
                raise BadInputError(f"bad input (strict mode): {e}") from None
            skips.append({"item": str(batch["video_id"][i]), "reason": e.reason, "detail": e.detail, "file": path})
            continue
        f, m = pad_frames(clip.frames, num_frames)
        keep.append(i)
        frames.append(f)
        masks.append(m)
    _log_skips(skip_log, skips)
    return _finish(batch, keep, frames, masks, num_frames, size, max_words)


_PQ_FILES: OrderedDict[str, pq.ParquetFile] = OrderedDict()


def _parquet_file(path: str) -> pq.ParquetFile:
    pf = _PQ_FILES.get(path)
    if pf is None:
        pf = pq.ParquetFile(path)
        _PQ_FILES[path] = pf
        while len(_PQ_FILES) > 32:
            _PQ_FILES.popitem(last=False)
    else:
        _PQ_FILES.move_to_end(path)
    return pf


def read_cache_row(path: str, row_group: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(frames, frame_index int64 [M], num_total)`` of one cached video: frames uint8 ``[M, S, S, 3]`` from a frame
    cache, float32 ``[M, D]`` from a feature cache (rows of ``size`` 0 hold float16 features)."""
    return read_cache_rows(path, [row_group])[0]


def read_cache_rows(path: str, row_groups) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """:func:`read_cache_row` for several row groups of one file, in the order given, with one parquet read."""
    wanted = [int(rg) for rg in row_groups]
    unique = sorted(set(wanted))
    t = _parquet_file(path).read_row_groups(unique, columns=["frames", "frame_index", "num_total", "size"])
    sizes, totals = t["size"].to_numpy(), t["num_total"].to_numpy()
    frame_index, frames = t["frame_index"].to_pylist(), t["frames"]
    rows = {}
    for i, rg in enumerate(unique):  # one row per row group (one video each)
        idx = np.asarray(frame_index[i], np.int64)
        s, buf = int(sizes[i]), frames[i].as_buffer()
        if s == 0:  # a feature cache row: float16 [M, D]
            arr = np.frombuffer(buf, np.float16).reshape(len(idx), -1).astype(np.float32)
        else:
            arr = np.frombuffer(buf, np.uint8).reshape(len(idx), s, s, 3)
        rows[rg] = (arr, idx, int(totals[i]))
    return [rows[rg] for rg in wanted]


def frames_from_cache(frames: np.ndarray, frame_index: np.ndarray, num_total: int, num_frames: int, train: bool,
                      rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sample K frames out of a cached video as if decoding it (see the module docstring)."""
    wanted = sample_indices(num_total, num_frames, train, rng)
    pos = snap_indices(wanted, frame_index)
    return pad_frames(frames[pos], num_frames)


def _cache_batch(batch: dict, *, num_frames: int, size: int, train: bool, max_words: int, seed,
                 feature_dim: int = 0) -> dict:
    rng = _rng(seed, batch)
    paths = [str(p) for p in batch["cache_file"]]
    groups = [int(rg) for rg in batch["cache_row_group"]]
    rows: dict[tuple[str, int], tuple] = {}
    for path in dict.fromkeys(paths):  # one parquet read per cache file of the batch
        mine = [rg for p, rg in zip(paths, groups) if p == path]
        rows.update({(path, rg): row for rg, row in zip(mine, read_cache_rows(path, mine))})
    frames, masks = [], []
    for key in zip(paths, groups):
        f, m = frames_from_cache(*rows[key], num_frames, train, rng)
        frames.append(f)
        masks.append(m)
    return _finish(batch, list(range(len(frames))), frames, masks, num_frames, size, max_words, feature_dim)


# ---------------------------------------------------------------------------------------------------------------------
# the streaming dataset


def video_dataset(manifest, split: str, *, num_frames: int, size: int, train: bool, max_words: int = 32,
                  mode: str = "pairs", decoder: str = "decord", cache: str | os.PathLike | None = None,
                  batch_size: int = 16, num_cpus: float | None = None, memory: int | None = None,
                  timeout_s: float = 60.0,
                  shuffle: bool | None = None, seed: int | None = None, strict: bool = False,
                  skip_log: SkipLog | None = None, concurrency: int | None = None):
    """A ``ray.data.Dataset`` of decoded clips for one split (see the module docstring for the row layout).

    ``mode="pairs"``: one row per video-caption pair (training); ``mode="videos"``: one row per video (evaluation; get
    the texts from :func:`eval_texts`). ``shuffle`` (default: ``train``) permutes the items on the driver and
    randomises the block order on every execution, so each epoch sees a new order (and, in training, new random
    frames); ``seed`` makes that sequence of orders and frames repeat from run to run (up to the order in which
    parallel tasks finish). Bad videos are dropped and recorded in ``skip_log`` (also attached to the dataset as
    ``ds.skip_log``); ``strict=True`` fails the stream at the first one. With ``cache`` frames are read from a frame
    cache written by :func:`prepare_cache` (videos absent from the cache are skipped, having been reported there).

    ``num_cpus`` per map task defaults to 1 when decoding and 0.25 when reading a cache. Ray Data tasks need CPUs that
    Ray Train workers do not hold: leave some free (e.g. ``resources_per_worker={"CPU": 0.5}`` on a 2-core node).
    """
    items = _items(manifest, split, mode, max_words)
    shuffle = train if shuffle is None else shuffle
    total = items.num_rows
    if skip_log is None:
        skip_log = SkipLog(stage=f"stream {split}/{mode}")
    cache_dir = None
    feature_dim = 0
    if cache is not None:
        cache_dir = Path(cache) / split
        meta = read_cache_meta(cache, split)
        feature_dim = int(meta.get("feature_dim") or 0)
        if feature_dim:
            pass  # per-frame features: the image size they were computed at is the tower's business
        elif meta["size"] != size:
            raise ValueError(f"frame cache {cache_dir} holds {meta['size']}px frames, {size}px requested: prepare a "
                             f"cache at this size")
        if meta.get("num_frames") not in (None, num_frames):
            log.warning("frame cache %s was prepared for K=%s frames per clip; K=%d is sampled from it, each frame "
                        "snapped to the nearest cached one (evaluation is then not frame-exact: prepare a cache for "
                        "K=%d for that)", cache_dir, meta["num_frames"], num_frames, num_frames)
        index = pq.read_table(cache_dir / "index.parquet").to_pydict()
        where = {v: (str(cache_dir / f), int(rg)) for v, f, rg in zip(index["video_id"], index["file"],
                                                                        index["row_group"])}
        vids = items["video_id"].to_pylist()
        present = np.array([v in where for v in vids], dtype=bool)
        if not present.all():
            missing = sorted({v for v, p in zip(vids, present) if not p})
            log.warning("%d of %d videos of split %s are not in the frame cache (skipped when it was prepared)",
                        len(missing), len(set(vids)), split)
            _log_skips(skip_log, [{"item": v, "reason": "not_in_cache", "detail": f"see {cache_dir}/skipped.json",
                                   "file": ""} for v in missing])
            items = items.filter(pa.array(present))
        vids = items["video_id"].to_pylist()
        items = items.append_column("cache_file", pa.array([where[v][0] for v in vids], pa.string()))
        items = items.append_column("cache_row_group", pa.array([where[v][1] for v in vids], pa.int64()))
    if shuffle:
        perm = np.random.default_rng(seed).permutation(items.num_rows)
        items = items.take(pa.array(perm))
    if items.num_rows == 0:
        raise ValueError(f"split {split!r} has no usable item")
    ds = ray.data.from_arrow(_blocks(items, batch_size))
    if shuffle:  # a new block order on every execution (epoch); with a seed, the same sequence of orders every run
        ds = ds.randomize_block_order(seed=ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True))
    ds = _with_draws(ds, seed)  # new random frames every epoch, the same ones in every run
    common = {"num_frames": num_frames, "size": size, "train": train, "max_words": max_words, "seed": seed}
    if num_cpus is None:
        num_cpus = 0.25 if cache_dir is not None else 1.0
    remote = {"num_cpus": num_cpus, "memory": memory if memory is not None else _task_memory(batch_size, num_frames,
                                                                                              size)}
    if concurrency is not None:
        remote["concurrency"] = concurrency
    if cache_dir is not None:
        ds = ds.map_batches(_cache_batch, batch_size=batch_size, batch_format="numpy",
                            fn_kwargs={**common, "feature_dim": feature_dim}, **remote)
    else:
        ds = ds.map_batches(_decode_batch, batch_size=batch_size, batch_format="numpy",
                            fn_kwargs={**common, "decoder": decoder, "timeout_s": timeout_s, "strict": strict,
                                       "skip_log": skip_log}, **remote)
    ds.skip_log = skip_log  # type: ignore[attr-defined]
    ds.expected_items = total  # type: ignore[attr-defined]
    return ds


# ---------------------------------------------------------------------------------------------------------------------
# frame cache


_CACHE_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("video_index", pa.int64()),
    ("num_total", pa.int64()),
    ("size", pa.int32()),
    ("frame_index", pa.list_(pa.int32())),
    ("frames", pa.binary()),
])


class _CacheWriter:
    """Writes cache rows (``_CACHE_SCHEMA``) into ``part-NNNNN.parquet`` files of ``rows_per_file`` videos, one row
    group per video, and ``index.parquet`` on close."""

    def __init__(self, folder: Path, rows_per_file: int):
        self.folder, self.rows_per_file = folder, rows_per_file
        self.writer, self.file_no, self.in_file, self.nbytes = None, -1, 0, 0
        self.index = {"video_id": [], "video_index": [], "file": [], "row_group": [], "num_total": [],
                      "num_cached": []}

    def write(self, rows: pa.Table) -> int:
        """Append rows; returns how many were written."""
        rows = rows.select(_CACHE_SCHEMA.names).cast(_CACHE_SCHEMA)
        n = rows.num_rows
        lens = pc.list_value_length(rows["frame_index"]).to_pylist()
        self.nbytes += int(pc.sum(pc.binary_length(rows["frames"])).as_py() or 0)
        while rows.num_rows:
            if self.writer is None or self.in_file >= self.rows_per_file:
                if self.writer is not None:
                    self.writer.close()
                self.file_no += 1
                self.in_file = 0
                self.writer = pq.ParquetWriter(self.folder / f"part-{self.file_no:05d}.parquet", _CACHE_SCHEMA,
                                               compression="zstd")
            take = min(rows.num_rows, self.rows_per_file - self.in_file)
            part = rows.slice(0, take)
            self.writer.write_table(part, row_group_size=1)  # one row group per video: rows are read one by one
            self.index["video_id"] += part["video_id"].to_pylist()
            self.index["video_index"] += part["video_index"].to_pylist()
            self.index["file"] += [f"part-{self.file_no:05d}.parquet"] * take
            self.index["row_group"] += list(range(self.in_file, self.in_file + take))
            self.index["num_total"] += part["num_total"].to_pylist()
            self.index["num_cached"] += lens[:take]
            lens = lens[take:]
            rows = rows.slice(take)
            self.in_file += take
        return n

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        pq.write_table(pa.table(self.index, schema=pa.schema([
            ("video_id", pa.string()), ("video_index", pa.int64()), ("file", pa.string()), ("row_group", pa.int64()),
            ("num_total", pa.int64()), ("num_cached", pa.int64())])), self.folder / "index.parquet")


def _prepare_batch(batch: dict, *, num_frames: int, size: int, decoder: str, timeout_s: float) -> pa.Table:
    rows = {k: [] for k in ("video_id", "video_index", "video_path", "ok", "reason", "detail", "num_total",
                            "frame_index", "frames")}
    for vid, vidx, path in zip(batch["video_id"], batch["video_index"], batch["video_path"]):
        rows["video_id"].append(str(vid))
        rows["video_index"].append(int(vidx))
        rows["video_path"].append(str(path))
        try:
            clip = decode_clip(str(path), num_frames, size, train=False, decoder=decoder, timeout_s=timeout_s)
            f = clip.frames
            if f.dtype != np.uint8 or f.shape[1:] != (size, size, 3) or len(f) != len(clip.indices) or len(f) == 0:
                raise VideoError(str(path), "invalid_frames", f"array {f.dtype} {tuple(f.shape)}")
            rows["ok"].append(True)
            rows["reason"].append("")
            rows["detail"].append("")
            rows["num_total"].append(int(clip.num_total))
            rows["frame_index"].append(clip.indices.astype(np.int32).tolist())
            rows["frames"].append(np.ascontiguousarray(f).tobytes())
        except VideoError as e:
            rows["ok"].append(False)
            rows["reason"].append(e.reason)
            rows["detail"].append(e.detail)
            rows["num_total"].append(0)
            rows["frame_index"].append([])
            rows["frames"].append(b"")
    return pa.table({
        "video_id": pa.array(rows["video_id"], pa.string()), "video_index": pa.array(rows["video_index"], pa.int64()),
        "video_path": pa.array(rows["video_path"], pa.string()), "ok": pa.array(rows["ok"], pa.bool_()),
        "reason": pa.array(rows["reason"], pa.string()), "detail": pa.array(rows["detail"], pa.string()),
        "num_total": pa.array(rows["num_total"], pa.int64()),
        "frame_index": pa.array(rows["frame_index"], pa.list_(pa.int32())),
        "frames": pa.array(rows["frames"], pa.binary()),
    })


def read_cache_meta(cache: str | os.PathLike, split: str) -> dict:
    path = Path(cache) / split / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"no frame cache for split {split!r} under {cache} ({path} missing): run "
                                f"`glccl data prepare`")
    meta = json.loads(path.read_text())
    if meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path}: not a {CACHE_FORMAT} cache")
    return meta


def prepare_cache(manifest, splits, out_dir: str | os.PathLike, *, num_frames: int, size: int, cache_factor: int = 3,
                  decoder: str = "decord", timeout_s: float = 60.0, strict: bool = False,
                  max_skip_fraction: float = 0.01, batch_size: int = 8, num_cpus: float = 1.0,
                  memory: int | None = None, rows_per_file: int = 256, progress: bool = True) -> dict:
    """Decode every video of ``splits`` once and write the parquet frame cache under ``out_dir/<split>/``.

    Bad videos are skipped and listed in ``out_dir/<split>/skipped.json`` (strict: :class:`BadInputError` at the first
    one, and nothing is written). Frames are validated before writing (dtype, shape, count): a row never holds garbage.
    Each split is written to a temporary folder and moved into place when complete. Returns a summary dict with one
    entry per split, including ``exceeded`` (skipped share above ``max_skip_fraction``).
    """
    if isinstance(splits, str):
        splits = [splits]
    table = _table(manifest)
    out = Path(out_dir)
    check_cache_settings(out, splits, num_frames=num_frames, size=size, cache_factor=cache_factor)
    out.mkdir(parents=True, exist_ok=True)
    m = num_frames * cache_factor
    ctx = ray.data.DataContext.get_current()
    old_bars = ctx.enable_progress_bars
    summary: dict = {"out_dir": str(out), "splits": {}}
    staged: dict[str, dict] = summary["splits"]
    try:
        if progress:
            ctx.enable_progress_bars = False
        for split in splits:
            staged[split] = _prepare_split(
                table, split, out, m=m, num_frames=num_frames, size=size, cache_factor=cache_factor, decoder=decoder,
                timeout_s=timeout_s, strict=strict, max_skip_fraction=max_skip_fraction, batch_size=batch_size,
                num_cpus=num_cpus, memory=memory, rows_per_file=rows_per_file, progress=progress)
    except BaseException:  # an error, strict mode or Ctrl-C: nothing of this prepare is installed
        for s in staged.values():
            shutil.rmtree(s.pop("tmp"), ignore_errors=True)
        raise
    finally:
        ctx.enable_progress_bars = old_bars
    summary["installed"] = not any(s["exceeded"] for s in staged.values())
    for split, s in staged.items():  # all splits or none: the cache never mixes this prepare with an earlier one
        tmp = s.pop("tmp")
        if summary["installed"]:
            _install(tmp, out / split)
            (out / f"{split}.rejected.skipped.json").unlink(missing_ok=True)  # of an earlier, refused prepare
            s["report"] = str(out / split / "skipped.json")
        else:  # the good cache stays as it was; the report of what was skipped is kept beside it
            os.replace(tmp / "skipped.json", out / f"{split}.rejected.skipped.json")
            s["report"] = str(out / f"{split}.rejected.skipped.json")
            shutil.rmtree(tmp, ignore_errors=True)
    summary["items"] = sum(s["videos"] for s in summary["splits"].values())
    summary["skipped"] = sum(s["skipped"] for s in summary["splits"].values())
    summary["exceeded"] = any(s["exceeded"] for s in summary["splits"].values())
    return summary


def _prepare_split(table, split, out: Path, *, m, num_frames, size, cache_factor, decoder, timeout_s, strict,
                   max_skip_fraction, batch_size, num_cpus, memory, rows_per_file, progress) -> dict:
    t0 = time.perf_counter()
    items = _items(table, split, "videos")
    n = items.num_rows
    report = SkipReport(stage=f"prepare {split}", strict=strict, max_fraction=max_skip_fraction)
    tmp = out / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ds = ray.data.from_arrow(_blocks(items, batch_size)).map_batches(
        _prepare_batch, batch_size=batch_size, batch_format="numpy",
        fn_kwargs={"num_frames": m, "size": size, "decoder": decoder, "timeout_s": timeout_s},
        num_cpus=num_cpus, memory=memory if memory is not None else _task_memory(batch_size, m, size))
    bar = None
    if progress:
        bar = tqdm(total=n, desc=f"prepare {split}", unit="video", dynamic_ncols=True)
    writer = _CacheWriter(tmp, rows_per_file)
    try:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            ok = block["ok"].to_pylist()
            if not all(ok):
                meta_cols = block.select(["video_id", "reason", "detail", "video_path"]).to_pylist()
                for good, r in zip(ok, meta_cols):
                    if not good:
                        report.skip(r["video_id"], r["reason"], r["detail"], r["video_path"])  # strict: raises
            rows = block.filter(block["ok"]).select(["video_id", "video_index", "num_total", "frame_index", "frames"])
            rows = rows.append_column("size", pa.array(np.full(rows.num_rows, size, np.int32)))
            report.add_ok(writer.write(rows))
            if bar is not None:
                bar.update(len(ok))
        writer.close()
    except BaseException:
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    nbytes = writer.nbytes
    elapsed = time.perf_counter() - t0
    report.write(tmp / "skipped.json")
    meta = {"format": CACHE_FORMAT, "split": split, "num_frames": num_frames, "size": size,
            "cache_factor": cache_factor, "frames_per_video": m, "videos": report.ok, "skipped": report.num_skipped,
            "decoder": decoder, "frame_bytes": nbytes, "seconds": round(elapsed, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return {"videos": n, "written": report.ok, "skipped": report.num_skipped, "exceeded": report.exceeded,
            "seconds": round(elapsed, 2), "videos_per_s": round(n / elapsed, 2) if elapsed > 0 else None,
            "frame_bytes": nbytes, "tmp": tmp, "summary": report.summary(), "by_reason": report.by_reason()}


def _install(tmp: Path, final: Path) -> None:
    """Move a complete split folder into place; the one it replaces is moved aside first and deleted after."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


CACHE_SETTINGS = ("num_frames", "size", "cache_factor")


def check_cache_settings(out: str | os.PathLike, splits, *, num_frames: int, size: int, cache_factor: int) -> None:
    """Refuse to write ``splits`` into a cache whose other splits were prepared with other settings (a run would read
    splits sampled differently); ``ValueError`` naming the split and the settings. Checked before Ray starts."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"frame cache {out} is a file, not a folder")
    want = {"num_frames": num_frames, "size": size, "cache_factor": cache_factor}
    for meta_path in sorted(out.glob("*/meta.json")) if out.is_dir() else []:
        split = meta_path.parent.name
        if split in splits or split.startswith("."):
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("format") != CACHE_FORMAT or meta.get("feature_dim"):
            continue
        have = {k: meta.get(k) for k in CACHE_SETTINGS}
        if have != want:
            diff = ", ".join(f"{k} {have[k]} there, {want[k]} here" for k in CACHE_SETTINGS if have[k] != want[k])
            raise ValueError(f"frame cache {out}: split {split!r} was prepared with other settings ({diff}); "
                             f"prepare every split again with these settings, or write to another --out")


# ---------------------------------------------------------------------------------------------------------------------
# feature cache: the frozen frame tower's per-frame features, computed once


class _FrameTower:
    """Ray Data actor: holds a CLIP visual tower and turns cached frames into float16 per-frame features."""

    def __init__(self, preset: str, visual_state, threads: int = 1):
        import torch  # lazy: decode workers must not import torch

        from glccl.encoders import clip as clip_enc  # lazy: decode workers must not import torch
        if isinstance(visual_state, ray.ObjectRef):  # the weights travel once through the object store
            visual_state = ray.get(visual_state)

        torch.set_num_threads(max(1, threads))
        self.clip = clip_enc.build_clip(preset).eval()
        self.clip.visual.load_state_dict(visual_state)
        self.encode = clip_enc.encode_frames

    def __call__(self, batch: dict) -> pa.Table:
        import torch  # lazy: decode workers must not import torch
        paths = [str(p) for p in batch["cache_file"]]
        groups = [int(rg) for rg in batch["cache_row_group"]]
        out = {"video_id": [], "video_index": [], "num_total": [], "frame_index": [], "frames": [], "size": []}
        with torch.no_grad():
            for i, (path, rg) in enumerate(zip(paths, groups)):
                frames, idx, total = read_cache_row(path, rg)
                x = torch.from_numpy(np.ascontiguousarray(frames))[None].permute(0, 1, 4, 2, 3)  # [1, M, 3, S, S]
                feats = self.encode(self.clip, x, None)[0][0].float()  # [M, D]
                out["video_id"].append(str(batch["video_id"][i]))
                out["video_index"].append(int(batch["video_index"][i]))
                out["num_total"].append(total)
                out["frame_index"].append(idx.astype(np.int32).tolist())
                out["frames"].append(feats.numpy().astype(np.float16).tobytes())
                out["size"].append(0)
        return pa.table(out).select(_CACHE_SCHEMA.names).cast(_CACHE_SCHEMA)


def tower_fingerprint(model) -> str:
    """Hex digest of a model's frame tower (CLIP visual): a feature cache is valid for this tower only."""
    from glccl.search import weights_fingerprint  # lazy: decode workers must not import torch
    return weights_fingerprint({"visual": model.clip.visual}, f"preset={model.preset};image={model.image_size}")


def prepare_features(frame_cache: str | os.PathLike, splits, out_dir: str | os.PathLike, model, *,
                     batch_size: int = 8, actors: int = 1, threads: int = 1, rows_per_file: int = 256) -> dict:
    """Run ``model``'s frame tower (its CLIP visual, frozen) over every cached frame of ``splits`` of a frame cache and
    write a feature cache under ``out_dir/<split>/``: the frame cache's layout, each row holding float16 ``[M, D]``
    features of the same M frames, so training samples frames from it exactly as from the frame cache.

    ``meta.json`` records the tower's fingerprint (:func:`tower_fingerprint`), preset and feature width; each split is
    written to a temporary folder and moved into place when complete. Ray Data runs the tower in ``actors`` actors.
    """
    if isinstance(splits, str):
        splits = [splits]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    visual_state = {k: v.detach().cpu() for k, v in model.clip.visual.state_dict().items()}
    fingerprint = tower_fingerprint(model)
    summary: dict = {"out_dir": str(out), "splits": {}}
    for split in splits:
        t0 = time.perf_counter()
        src = read_cache_meta(frame_cache, split)
        if src.get("feature_dim"):
            raise ValueError(f"{Path(frame_cache) / split} is already a feature cache: give a frame cache")
        if src["size"] != model.image_size:
            raise ValueError(f"frame cache {Path(frame_cache) / split} holds {src['size']}px frames; the frame tower "
                             f"takes {model.image_size}px")
        index = pq.read_table(Path(frame_cache) / split / "index.parquet")
        items = pa.table({"video_id": index["video_id"], "video_index": index["video_index"],
                          "cache_file": pa.array([str(Path(frame_cache) / split / f) for f in
                                                  index["file"].to_pylist()]),
                          "cache_row_group": index["row_group"]})
        tmp = out / f".{split}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ds = ray.data.from_arrow(_blocks(items, batch_size)).map_batches(
            _FrameTower, fn_constructor_args=(model.preset, ray.put(visual_state), threads),
            batch_size=batch_size, batch_format="numpy", num_cpus=threads, concurrency=actors)
        writer = _CacheWriter(tmp, rows_per_file)
        try:
            written = sum(writer.write(b) for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
            writer.close()
        except BaseException:
            writer.close()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        dim = model.embed_dim
        meta = {**src, "feature_dim": dim, "feature_dtype": "float16", "tower": {"preset": model.preset,
                "fingerprint": fingerprint, "image_size": model.image_size}, "videos": written,
                "frame_bytes": writer.nbytes, "seconds": round(time.perf_counter() - t0, 2),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "source": str(Path(frame_cache) / split)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        skipped = Path(frame_cache) / split / "skipped.json"
        if skipped.is_file():
            shutil.copyfile(skipped, tmp / "skipped.json")
        shutil.rmtree(out / split, ignore_errors=True)
        os.replace(tmp, out / split)
        summary["splits"][split] = {"videos": written, "seconds": meta["seconds"], "bytes": writer.nbytes}
    return summary
