"""``glccl data synth | manifest | prepare``: build data sets, manifests and frame caches.

    glccl data synth --out data/synth                                  # synthetic benchmark (mp4 + MSVD-style files)
    glccl data manifest --dataset msrvtt --root ../shared/data/annotations/msrvtt --split test --out m.parquet
    glccl data prepare --dataset synth --root data/synth --size 64 --num-frames 12 --out data/synth/cache

Each command shows a progress bar and ends with a summary (items, skipped, time, throughput). Exit status: 0 on
success; 1 when the skipped share exceeds ``--max-skip-fraction`` (default 1 %; the output and the skip report are
still written); 2 on an error: a malformed annotation file (the message names the file and line), or with ``--strict``
the first bad item (the message names the file and the reason).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from glccl.config import DataConfig, load_config
from glccl.data.manifest import (build_manifest, build_manifests, check_splits, default_video_dir, read_manifest,
                                 write_manifest)
from glccl.data.report import AnnotationError, BadInputError, DataError, MissingAnnotationError, SkipReport
from glccl.data.synth import check_events, generate
from glccl.model import create_model_from_config
from pipelines import data as D
from pipelines import ray_session

DEFAULT_SPLITS = {"synth": ("train", "val", "test"), "msrvtt": ("train", "test"), "msvd": ("train", "val", "test"),
                  "didemo": ("train", "val", "test"), "vatex": ("train", "val", "test")}
_D = DataConfig()


def _fmt_rate(n: int, seconds: float, unit: str) -> str:
    return f"{n / seconds:.1f} {unit}/s" if seconds > 0 else "n/a"


def _summary(title: str, items: int, skipped: int, seconds: float, unit: str, extra: dict | None = None) -> None:
    print(f"\n== {title} ==")
    print(f"  items:      {items}")
    print(f"  skipped:    {skipped}")
    print(f"  time:       {seconds:.1f} s")
    print(f"  throughput: {_fmt_rate(items, seconds, unit)}")
    for k, v in (extra or {}).items():
        print(f"  {k + ':':<11} {v}")


# ---------------------------------------------------------------------------------------------------------------------


def cmd_synth(args) -> int:
    total = args.num_train + args.num_val + args.num_test
    t0 = time.perf_counter()
    with tqdm(total=total, desc="synth", unit="video", dynamic_ncols=True, disable=args.quiet) as bar:
        s = generate(args.out, num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                     seed=args.seed, size=args.size, fps=args.fps, seconds=args.seconds, workers=args.workers,
                     events=args.events, layout=args.layout, described=args.described, progress=bar.update)
    dt = time.perf_counter() - t0
    _summary("glccl data synth", total, 0, dt, "videos", {
        "output": s["out_dir"],
        "videos": ", ".join(f"{k} {v}" for k, v in s["videos"].items()),
        "captions": ", ".join(f"{k} {v}" for k, v in s["captions"].items()),
        "size": f"{s['bytes'] / 2**20:.1f} MiB",
    })
    return 0


def cmd_manifest(args) -> int:
    out = Path(args.out or f"data/manifests/{args.dataset}.parquet")
    report = SkipReport(stage=f"manifest {args.dataset}", strict=args.strict, max_fraction=args.max_skip_fraction)
    video_dir = Path(args.video_dir) if args.video_dir else default_video_dir(args.root)
    check = args.check_videos if args.check_videos is not None else video_dir.is_dir() and any(
        p.suffix for p in video_dir.iterdir() if p.is_file() and p.suffix.lower() in (".mp4", ".avi", ".webm", ".mkv"))
    splits = args.split or list(DEFAULT_SPLITS[args.dataset])
    t0 = time.perf_counter()
    tables = []
    for split in tqdm(splits, desc=f"manifest {args.dataset}", unit="split", dynamic_ncols=True, disable=args.quiet):
        try:
            tables.append(build_manifest(args.dataset, args.root, split, video_dir, report, check_videos=check))
        except MissingAnnotationError as e:
            if args.split:
                raise
            print(f"note: split {split!r} skipped: {e}", file=sys.stderr)
    if not tables:
        raise AnnotationError(args.root, f"no split of {args.dataset} found")
    table = pa.concat_tables(tables)
    present = set(table["split"].to_pylist())
    named = [sp for sp in splits if sp in present or args.split]  # an empty split asked for by name is an error
    disjoint = () if args.allow_split_overlap else [("train", sp) for sp in named if sp != "train"]
    check_splits(table, named, disjoint=disjoint, where=f"{args.dataset} in {args.root}: ")
    write_manifest(table, out)
    rep_path = report.write(out.with_suffix(".skipped.json"))
    dt = time.perf_counter() - t0
    counts = {}
    for s in table["split"].to_pylist():
        counts[s] = counts.get(s, 0) + 1
    vids = {}
    for s, v in zip(table["split"].to_pylist(), table["video_id"].to_pylist()):
        vids.setdefault(s, set()).add(v)
    _summary(f"glccl data manifest {args.dataset}", report.total, report.num_skipped, dt, "captions", {
        "output": str(out),
        "rows": ", ".join(f"{s} {n} captions / {len(vids[s])} videos" for s, n in counts.items()),
        "report": str(rep_path),
        "videos checked": "yes" if check else "no (decode time)",
    })
    if report.num_skipped:
        print(report.summary())
    if report.exceeded:
        print(f"error: skipped share {100 * report.fraction:.2f} % exceeds the limit "
              f"{100 * report.max_fraction:.2f} % (--max-skip-fraction)", file=sys.stderr)
        return 1
    return 0


def cmd_prepare(args) -> int:
    report = SkipReport(stage="manifest", strict=args.strict, max_fraction=args.max_skip_fraction)
    if args.manifest:
        table = read_manifest(args.manifest)
        splits = args.split or sorted(set(table["split"].to_pylist()))
        source = args.manifest
    else:
        if not (args.dataset and args.root):
            print("glccl data prepare: give --manifest, or --dataset and --root", file=sys.stderr)
            return 2
        splits = args.split or list(DEFAULT_SPLITS[args.dataset])
        table = build_manifests(args.dataset, args.root, splits, args.video_dir, report)
        source = f"{args.dataset} annotations in {args.root}"
    out = Path(args.out or (Path(args.root) / "cache" if args.root else Path("data/cache")))
    D.check_cache_settings(out, splits, num_frames=args.num_frames, size=args.size, cache_factor=args.cache_factor)
    session = ray_session.connect(args.address, num_cpus=args.num_cpus, object_store_mb=args.object_store_mb,
                                  log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    with session:
        s = D.prepare_cache(table, splits, out, num_frames=args.num_frames, size=args.size,
                            cache_factor=args.cache_factor, decoder=args.decoder, timeout_s=args.timeout,
                            strict=args.strict, max_skip_fraction=args.max_skip_fraction,
                            batch_size=args.batch_size, num_cpus=args.cpus_per_task, progress=not args.quiet)
    if not args.manifest and s["installed"]:
        # next to the cache, written once the cache is: training reads both (the same video numbering)
        write_manifest(table, out / "manifest.parquet")
        report.write(out / "manifest.skipped.json")
    dt = time.perf_counter() - t0
    _summary("glccl data prepare", s["items"], s["skipped"] + report.num_skipped, dt, "videos", {
        "source": source,
        "output": str(out) + ("" if args.manifest else " (with manifest.parquet)"),
        "frames": f"{args.cache_factor * args.num_frames} per video at {args.size}x{args.size} "
                  f"(K={args.num_frames}, cache_factor={args.cache_factor})",
        **{f"{k}": f"{v['written']}/{v['videos']} written, {v['seconds']} s, report {v['report']}"
           for k, v in s["splits"].items()},
    })
    bad = False
    for split, v in s["splits"].items():
        if v["skipped"]:
            print(f"[{split}] " + v["summary"])
        if v["exceeded"]:
            print(f"error: split {split}: skipped share exceeds the limit {100 * args.max_skip_fraction:.2f} % "
                  f"(--max-skip-fraction)", file=sys.stderr)
            bad = True
    if not s["installed"]:
        print(f"error: nothing of this prepare was installed; the cache in {out} is as it was", file=sys.stderr)
    if report.num_skipped:
        print("[annotations] " + report.summary())
        bad = bad or report.exceeded
    return 1 if bad else 0


def events_range(text: str) -> tuple[int, int]:
    """``"MIN-MAX"`` or ``"N"`` -> ``(min, max)`` events per video (argparse type)."""
    try:
        lo, _, hi = text.partition("-")
        return check_events((int(lo), int(hi or lo)))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: expected MIN-MAX or N events per video ({e})") from None


# ---------------------------------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type): a count of zero would write an empty data set or cache without a word."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (argparse type): a split may be left out (0), not be negative."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glccl data", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def bad_input_args(q):
        q.add_argument("--strict", action="store_true", help="stop at the first bad item")
        q.add_argument("--max-skip-fraction", type=float, default=_D.max_skip_fraction,
                       help="exit 1 when more than this share of items is skipped (default %(default)s)")
        q.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("synth", help="generate the synthetic partial-relevance benchmark")
    s.add_argument("--out", default="data/synth")
    s.add_argument("--num-train", type=positive_int, default=800)
    s.add_argument("--num-val", type=non_negative_int, default=100)
    s.add_argument("--num-test", type=non_negative_int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=positive_int, default=96, help="frame width and height in pixels")
    s.add_argument("--fps", type=positive_int, default=10)
    s.add_argument("--seconds", type=positive_float, default=5.0, help="length of every video")
    s.add_argument("--events", type=events_range, default=(2, 4), metavar="MIN-MAX",
                   help="events per video, e.g. 6-10 or 3 (default 2-4; longer videos can hold more)")
    s.add_argument("--layout", choices=("msvd", "didemo"), default="msvd",
                   help="msvd: one-event/two-event captions; didemo: paragraphs of moment descriptions in DiDeMo's "
                        "format (read with --dataset didemo)")
    s.add_argument("--described", type=events_range, default=None, metavar="MIN-MAX",
                   help="didemo layout: moments described per video (default: every event)")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_synth)

    m = sub.add_parser("manifest", help="annotation files -> canonical manifest parquet")
    m.add_argument("--dataset", required=True, choices=sorted(DEFAULT_SPLITS))
    m.add_argument("--root", required=True, help="folder with the annotation files")
    m.add_argument("--split", action="append", help="split(s) to include (repeatable; default: all present)")
    m.add_argument("--video-dir", default=None, help="folder with the videos (default: ROOT/videos or ROOT)")
    m.add_argument("--out", default=None, help="output parquet (default data/manifests/DATASET.parquet)")
    m.add_argument("--allow-split-overlap", action="store_true",
                   help="allow videos of the train split in the other splits (an error otherwise)")
    g = m.add_mutually_exclusive_group()
    g.add_argument("--check-videos", dest="check_videos", action="store_true", default=None,
                   help="skip rows whose video file is missing (default: when the video folder holds videos)")
    g.add_argument("--no-check-videos", dest="check_videos", action="store_false")
    bad_input_args(m)
    m.set_defaults(fn=cmd_manifest)

    r = sub.add_parser("prepare", help="decode every video once into a parquet frame cache (Ray Data)")
    r.add_argument("--manifest", default=None, help="a manifest parquet (or give --dataset and --root)")
    r.add_argument("--dataset", choices=sorted(DEFAULT_SPLITS), default=None)
    r.add_argument("--root", default=None)
    r.add_argument("--video-dir", default=None)
    r.add_argument("--split", action="append", help="split(s) to cache (repeatable; default: all)")
    r.add_argument("--out", default=None, help="cache folder (default ROOT/cache)")
    r.add_argument("--num-frames", type=positive_int, default=12, help="K, frames the model samples per video")
    r.add_argument("--size", type=positive_int, default=224, help="model input size (shorter side resize + centre crop)")
    r.add_argument("--cache-factor", type=positive_int, default=_D.cache_factor,
                   help="cache this many frames per sampled frame (default %(default)s; 1: fixed K frames)")
    r.add_argument("--decoder", choices=("decord", "pyav"), default=_D.decoder)
    r.add_argument("--timeout", type=float, default=_D.decode_timeout_s, help="seconds per video before giving up")
    r.add_argument("--batch-size", type=positive_int, default=_D.decode_batch_size, help="videos per Ray Data task")
    r.add_argument("--cpus-per-task", type=float, default=_D.decode_cpus)
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs of the private local Ray (default: all)")
    r.add_argument("--object-store-mb", type=int, default=1024)
    r.add_argument("--address", default=None, help="an existing Ray cluster to use instead of a private local one")
    bad_input_args(r)
    r.set_defaults(fn=cmd_prepare)

    f = sub.add_parser("features", help="a frozen frame tower's per-frame features, computed once into a feature "
                                        "cache (Ray Data); train from it with data.cache=OUT")
    f.add_argument("--config", required=True, help="the run config: its model (model.pretrained = the tower's "
                                                   "weights) and its frame cache (data.cache)")
    f.add_argument("--out", required=True, help="feature cache folder")
    f.add_argument("--split", action="append", help="split(s) (repeatable; default: the config's train/val/test)")
    f.add_argument("--actors", type=int, default=1, help="frame-tower actors")
    f.add_argument("--threads", type=int, default=1, help="torch threads (and CPUs) per actor")
    f.add_argument("--num-cpus", type=int, default=None, help="CPUs of the private local Ray (default: all)")
    f.add_argument("--quiet", action="store_true")
    f.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    f.set_defaults(fn=cmd_features)
    return p


def cmd_features(args) -> int:
    cfg = load_config(args.config, args.overrides)
    dc = cfg.data
    if not dc.cache:
        print("glccl data features: the config has no frame cache (set data.cache to one written by "
              "`glccl data prepare`)", file=sys.stderr)
        return 2
    splits = args.split or list(dict.fromkeys([dc.train_split, dc.val_split, dc.test_split]))
    if Path(args.out).resolve() == Path(dc.cache).resolve():
        print("glccl data features: --out must differ from the frame cache data.cache", file=sys.stderr)
        return 2
    model = create_model_from_config(cfg.model).eval()
    for split in splits:
        D.read_cache_meta(dc.cache, split)  # a missing split is named before Ray starts
    t0 = time.perf_counter()
    with ray_session.connect(None, num_cpus=args.num_cpus, log_to_driver=False):
        s = D.prepare_features(dc.cache, splits, args.out, model, actors=args.actors, threads=args.threads)
    n = sum(v["videos"] for v in s["splits"].values())
    _summary("glccl data features", n, 0, time.perf_counter() - t0, "videos", {
        "output": s["out_dir"],
        "tower": f"{cfg.model.preset} ({cfg.model.pretrained or 'random init'})",
        **{k: f"{v['videos']} videos, {v['bytes'] / 2**20:.1f} MiB, {v['seconds']} s" for k, v in s["splits"].items()},
    })
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except BadInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, FileNotFoundError, FileExistsError, ValueError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
