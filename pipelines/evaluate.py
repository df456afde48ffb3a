"""``glccl eval``: evaluate a trained model on a split (Ray Data decodes the videos; the model scores in blocks).

    glccl eval --checkpoint runs/demo-glccl/best_model.pt                  # its own config's test split
    glccl eval --checkpoint runs/demo-glccl/best_model.pt --split val data.root=data/other
    glccl eval --checkpoint CKPT --json metrics.json

A checkpoint is the ``best_model.pt`` a training run writes next to its checkpoints ({"model", "config"}). It is read
with ``weights_only=True`` (``glccl.safe_load``): a file that carries pickled code is refused, and its code never runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from glccl.config import ConfigError, RunConfig
from glccl.evaluation import evaluate_retrieval
from pipelines import ray_session, run_data
from pipelines.checkpoints import load_model_checkpoint
from pipelines.data import check_skips, torch_dtypes


def evaluate(model, cfg: RunConfig, split: str, storage: Path | None = None) -> dict[str, float]:
    """Retrieval metrics of ``model`` on ``split`` of the config's data (Ray must be up: :func:`ray_session.connect`)."""
    storage = storage or Path(cfg.storage).resolve() / cfg.name
    manifest = run_data.ensure_manifest(cfg.data, storage)
    ds = run_data.split_dataset(cfg, manifest, split, model.image_size)
    texts = run_data.eval_texts(manifest, split, cfg.model.max_words)
    batches = ds.iter_torch_batches(batch_size=cfg.train.eval_batch_size, dtypes=torch_dtypes("videos"))
    metrics = evaluate_retrieval(model, batches, texts["tokens"], texts["text_to_video"],
                                 batch_size=cfg.train.eval_batch_size, video_chunk=cfg.model.sim_chunk).metrics
    check_skips(ds.skip_log, len(texts["video_ids"]), split)  # metrics over a gallery missing its videos mislead
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="glccl eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default=None, help="split to evaluate (default: the config's test split)")
    p.add_argument("--json", default=None, help="also write the metrics to this file")
    p.add_argument("--address", default=None)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the checkpoint's config (e.g. data.root=...)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        model, cfg = load_model_checkpoint(args.checkpoint, args.overrides)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"glccl eval: {e}", file=sys.stderr)
        return 2
    ray_session.connect(args.address, num_cpus=ray_session.local_cpus(cfg), dashboard=True, object_store_mb=2048)
    split = args.split or cfg.data.test_split
    metrics = evaluate(model, cfg, split)
    for k, v in metrics.items():
        print(f"{k:<20} {v:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
