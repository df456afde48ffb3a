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
from typing import Any

import torch

from glccl.config import ConfigError, RunConfig, load_config


def load_checkpoint(path: str | Path, overrides: list[str] | None = None):
    """Return (model, cfg) from a ``best_model.pt``; a missing, wrong or unsafe file is a one-line error
    (FileNotFoundError, or ValueError: unreadable, not a checkpoint, or refused for carrying pickled code)."""
    from glccl.model import create_model_from_config
    from glccl.safe_load import load_tensors

    path = Path(path)
    blob = load_tensors(path, "checkpoint")
    if not isinstance(blob, dict) or "model" not in blob or "config" not in blob:
        raise ValueError(f"checkpoint {path} is not a glccl model checkpoint (expected keys 'model' and 'config')")
    cfg = load_config(blob["config"], overrides)
    model = create_model_from_config(cfg.model)
    model.load_state_dict(blob["model"])
    return model.eval(), cfg


def evaluate(model, cfg: RunConfig, split: str, storage: Path | None = None) -> dict[str, Any]:
    from glccl import engine
    from glccl.metrics import retrieval_metrics
    from glccl.similarity import similarity_matrix
    from pipelines import data as pdata
    from pipelines.train import ensure_manifest

    storage = storage or Path(cfg.storage).resolve() / cfg.name
    manifest = ensure_manifest(cfg.data, storage)
    dc = cfg.data
    ds = pdata.video_dataset(manifest, split, num_frames=cfg.model.num_frames, size=model.image_size,
                             max_words=cfg.model.max_words, train=False, mode="videos", decoder=dc.decoder,
                             cache=dc.cache, timeout_s=dc.decode_timeout_s, strict=dc.strict)
    tokens, text_to_video, _, _ = pdata.eval_texts(manifest, split, cfg.model.max_words)
    texts = {"tokens": tokens, "text_to_video": text_to_video}
    batches = ds.iter_torch_batches(batch_size=cfg.train.eval_batch_size, dtypes=pdata.torch_dtypes("videos"))
    vids = engine.encode_videos(model, batches)
    order = torch.argsort(vids["video_index"])
    column = {int(v): i for i, v in enumerate(vids["video_index"][order].tolist())}
    t2v_all = torch.as_tensor(texts["text_to_video"])
    keep = torch.tensor([int(v) in column for v in t2v_all.tolist()], dtype=torch.bool)
    tfeat = engine.encode_texts(model, torch.as_tensor(texts["tokens"])[keep], cfg.train.eval_batch_size)
    sim = similarity_matrix(model.head, tfeat, {"frames": vids["frames"][order], "frame_mask": vids["frame_mask"][order]},
                            video_chunk=cfg.model.sim_chunk)
    t2v = torch.tensor([column[int(v)] for v in t2v_all[keep].tolist()])
    metrics = retrieval_metrics(sim, t2v)
    metrics["num_texts"], metrics["num_videos"] = float(sim.shape[0]), float(sim.shape[1])
    metrics["skipped_captions"] = float((~keep).sum())
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
        model, cfg = load_checkpoint(args.checkpoint, args.overrides)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"glccl eval: {e}", file=sys.stderr)
        return 2
    from pipelines.train import init_ray, local_cpus

    init_ray(args.address, local_cpus(cfg))
    split = args.split or cfg.data.test_split
    metrics = evaluate(model, cfg, split)
    for k, v in metrics.items():
        print(f"{k:<20} {v:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
