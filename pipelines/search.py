"""``glccl search``: text -> top-k videos over a precomputed gallery (two stages: cheap shortlist, then the full head).

    glccl search --checkpoint runs/demo-glccl/best_model.pt --build-gallery gallery.pt            # test split
    glccl search --checkpoint runs/demo-glccl/best_model.pt --build-gallery gallery.pt --split val
    glccl search --checkpoint CKPT --gallery gallery.pt "a red circle moves left" --k 5 --shortlist 50
    glccl search --checkpoint CKPT --gallery gallery.pt "query one" "query two" --exhaustive

Building a gallery decodes the split with Ray Data (``video_dataset(..., mode="videos")``, a private local Ray unless
``--address``/``RAY_ADDRESS``) and encodes every video once (CLIP + temporal encoder). Searching needs no Ray: stage 1
ranks every gallery video by a cheap exact score (``--stage1 meanp``: cosine with the mean-pooled video; ``glim``:
GLCCL's global GLIM score), stage 2 scores the ``--shortlist`` best with the model's head. Scores are the head's
unscaled scores. A gallery built by another video encoder is refused (rebuild it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from glccl.config import ConfigError
from glccl.search import Gallery, GalleryError, build_gallery, search
from pipelines import ray_session, run_data
from pipelines.checkpoints import load_model_checkpoint
from pipelines.data import check_skips, split_items, torch_dtypes


def build(checkpoint: str, out: str, split: str | None, overrides: list[str], address: str | None):
    """Decode + encode a split into a gallery file; returns (model, gallery)."""
    model, cfg = load_model_checkpoint(checkpoint, overrides)
    split = split or cfg.data.test_split
    storage = Path(cfg.storage).resolve() / cfg.name
    manifest = run_data.ensure_manifest(cfg.data, storage)
    ray_session.connect(address, num_cpus=ray_session.local_cpus(cfg), dashboard=True, object_store_mb=2048)
    t0 = time.perf_counter()
    ds = run_data.split_dataset(cfg, manifest, split, model.image_size)
    video_ids = split_items(manifest, split)["video_ids"]
    batches = ds.iter_torch_batches(batch_size=cfg.train.eval_batch_size, dtypes=torch_dtypes("videos"))
    gallery = build_gallery(model, batches, video_ids,
                            meta={"split": split, "checkpoint": str(Path(checkpoint).resolve()), "config": cfg.name})
    check_skips(ds.skip_log, len(video_ids), split)  # nothing is saved when too many videos could not be read
    gallery.save(out)
    skipped = len(video_ids) - len(gallery)
    print(f"gallery {out}: {len(gallery)} videos of split {split!r} ({skipped} skipped), "
          f"{gallery.frames.shape[1]} frames x {gallery.dim}-d, built in {time.perf_counter() - t0:.1f}s")
    return model, gallery


def format_results(query: str, results: list[tuple[str, float]], how: str) -> str:
    width = max([8] + [len(v) for v, _ in results])
    lines = [f"query: {query!r}  ({how})", f"{'rank':>4}  {'video_id':<{width}}  {'score':>8}"]
    lines += [f"{r:>4}  {v:<{width}}  {s:>8.4f}" for r, (v, s) in enumerate(results, 1)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="glccl search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("queries", nargs="*", help="text queries")
    p.add_argument("--checkpoint", required=True, help="a best_model.pt written by glccl train")
    p.add_argument("--gallery", default=None, help="gallery file to search")
    p.add_argument("--build-gallery", default=None, metavar="OUT", help="encode --split into this gallery file")
    p.add_argument("--split", default=None, help="split to put in the gallery (default: the config's test split)")
    p.add_argument("--k", type=int, default=10, help="results per query")
    p.add_argument("--shortlist", type=int, default=100, help="videos re-scored by the full head per query")
    p.add_argument("--stage1", choices=("meanp", "glim"), default="meanp", help="the cheap first-stage score")
    p.add_argument("--exhaustive", action="store_true", help="score every gallery video with the head (reference)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the checkpoint's config (e.g. data.root=...); repeatable")
    p.add_argument("--address", default=None, help="Ray cluster for --build-gallery (default: a private local one)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.k < 1 or args.shortlist < 1:
        p.error("--k and --shortlist must be >= 1")
    if not args.build_gallery and not args.gallery:
        p.error("give --gallery FILE to search, or --build-gallery OUT to build one")
    if not args.build_gallery and not args.queries:
        p.error("no query given")
    try:
        if args.build_gallery:
            model, gallery = build(args.checkpoint, args.build_gallery, args.split, args.overrides, args.address)
        else:
            model, _ = load_model_checkpoint(args.checkpoint, args.overrides)
            gallery = Gallery.load(args.gallery, model)
    except (ConfigError, FileNotFoundError, ValueError) as e:  # GalleryError is a ValueError
        print(f"glccl search: {e}", file=sys.stderr)
        return 2
    if not args.queries:
        return 0
    head = getattr(model.head, "name", type(model.head).__name__)
    t0 = time.perf_counter()
    try:
        results = search(model, gallery, args.queries, k=args.k, shortlist=args.shortlist,
                         exhaustive=args.exhaustive, stage1=args.stage1)
    except GalleryError as e:
        print(f"glccl search: {e}", file=sys.stderr)
        return 2
    ms = (time.perf_counter() - t0) * 1e3
    if args.exhaustive or args.shortlist >= len(gallery):
        how = f"{head} on all {len(gallery)} videos"
    else:
        how = f"{args.stage1} shortlist of {args.shortlist} / {len(gallery)} videos, then {head}"
    how += f"; {ms:.0f} ms for {len(args.queries)} quer{'y' if len(args.queries) == 1 else 'ies'}"
    for q, res in zip(args.queries, results):
        print(format_results(q, res, how))
        print()
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"query": q, "results": [{"video_id": v, "score": s} for v, s in res]}
             for q, res in zip(args.queries, results)], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
