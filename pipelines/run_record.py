"""What a training run records in MLflow beyond its step metrics: the resolved loss as params, the test artifacts
(metrics table, sample retrievals, every query's rank for ``glccl report``, the recall@K curve) and the best model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import mlflow
import numpy as np
import torch

from glccl.config import RunConfig, to_dict
from glccl.data.manifest import MANIFEST_SCHEMA
from glccl.data.report import BadInputError
from glccl.evaluation import RetrievalResult
from glccl.heads import get_head_class
from glccl.losses import loss_from_config, loss_recipe
from glccl.metrics import recall_at_k_curve, retrieval_ranks
from glccl.model import create_model_from_config
from pipelines import checkpoints, mlflow_model, tracking
from pipelines.data import check_skips, split_items
from pipelines.tracking import RANKS_ARTIFACT

matplotlib.use("Agg")  # workers and drivers have no display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

RECALL_KS = [1, 2, 3, 5, 10, 20, 50]


def loss_params(cfg: RunConfig) -> dict[str, Any]:
    """The run's resolved loss as MLflow params: ``loss.recipe`` (e.g. ``infonce + sdr``) and ``loss.terms``."""
    head = get_head_class(cfg.model.head)
    loss = loss_from_config(head, cfg.loss)
    return {"loss.recipe": loss_recipe(head, loss), "loss.terms": ",".join(loss.terms + head.aux_loss_names)}


def log_test_artifacts(logger: tracking.RunLogger, result: RetrievalResult, texts: dict[str, Any]) -> None:
    """Final metrics table, top-5 retrievals for sample queries, every query's rank, and the recall@K curve."""
    test = result.metrics
    logger.table({"metric": list(test), "value": [float(v) for v in test.values()]}, "metrics/test_metrics.json")
    sim, t2v, vindex = result.sim, result.text_to_video, result.video_index
    keep = result.keep.numpy()
    captions = [c for c, k in zip(texts["captions"], keep) if k]
    video_ids = texts["video_ids"]
    n_queries = min(10, sim.shape[0])
    qidx = np.linspace(0, sim.shape[0] - 1, n_queries).astype(int) if n_queries else []
    rows: dict[str, list] = {"query": [], "caption": [], "rank": [], "video_id": [], "score": [], "correct": []}
    for q in qidx:
        top = torch.topk(sim[q], k=min(5, sim.shape[1]))
        for r, (score, col) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            rows["query"].append(int(q))
            rows["caption"].append(captions[q])
            rows["rank"].append(r + 1)
            rows["video_id"].append(video_ids[int(vindex[col])])
            rows["score"].append(float(score))
            rows["correct"].append(bool(col == int(t2v[q])))
    logger.table(rows, "retrievals/test_top5.json")
    # every query's 0-based rank of its correct item: what intervals over test queries (glccl report) resample
    t2v_ranks, v2t_ranks = retrieval_ranks(sim, t2v)
    logger.text(json.dumps({"t2v": t2v_ranks.tolist(), "v2t": v2t_ranks.tolist(),
                            "video_ids": [video_ids[int(v)] for v in vindex.tolist()]}), RANKS_ARTIFACT)
    curve = recall_at_k_curve(sim, t2v, RECALL_KS)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(curve["k"], curve["t2v"], marker="o", label="text → video")
    ax.plot(curve["k"], curve["v2t"], marker="s", label="video → text")
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K (%)")
    ax.legend()
    ax.set_title("test recall@K")
    ax.grid(True, alpha=0.3)
    logger.figure(fig, "plots/test_recall_at_k.png")
    plt.close(fig)


def log_best_model(cfg: RunConfig, logger: tracking.RunLogger, checkpoint) -> Path:
    """Log the best-on-validation weights of the run's last Ray Train checkpoint as an MLflow model (safetensors +
    JSON config, no pickle: ``pipelines.mlflow_model``), and keep a plain ``best_model.pt`` next to the run's
    checkpoints; returns its path."""
    with checkpoint.as_directory() as d:
        best = checkpoints.load_best_weights(Path(d))
    dest = Path(cfg.storage).resolve() / cfg.name / checkpoints.BEST_WEIGHTS
    checkpoints.save_model_checkpoint(dest, best, cfg)
    create_model_from_config(cfg.model).load_state_dict(best)  # the weights fit the config before they are logged
    with tracking.fluent_uri(logger.uri), mlflow.start_run(run_id=logger.run_id):
        # explicit requirements skip MLflow's slow inference
        info = mlflow_model.log_model(best, to_dict(cfg), ["glccl", "torch==2.13.0", "open_clip_torch==3.3.0"])
    logger.tag("glccl.best_model_path", str(dest))
    logger.tag("glccl.best_model_uri", info.model_uri)
    if cfg.train.register_model:
        with tracking.fluent_uri(logger.uri):
            version = mlflow.register_model(info.model_uri, cfg.train.register_model)
        logger.tag("glccl.registered_model", f"{version.name}/{version.version}")
        print(f"[glccl] best model registered as {version.name} version {version.version}", flush=True)
    return dest


def log_data(logger: tracking.RunLogger, cfg: RunConfig, data) -> Exception | None:
    """Record the run's data: the skip lists (:func:`log_skips`) and the manifest as the run's MLflow dataset input
    (source path, digest, per split the videos, captions and skipped videos). Returns a skip-limit failure, if any."""
    failure = log_skips(logger, data.skips, cfg.data)
    dc = cfg.data
    profile = {}
    for role in ("train", "val", "test"):
        split = getattr(dc, f"{role}_split")
        items = split_items(data.manifest, split)
        log, total = data.skips[role]
        profile[split] = {"videos": len(items["video_ids"]), "captions": len(items["captions"]),
                          "skipped": log.report(total).num_skipped}
    manifest = Path(data.manifest).resolve()
    tracking.log_dataset(logger.uri, logger.run_id, name=f"{dc.dataset}:{Path(dc.root).name}", source=str(manifest),
                         digest=tracking.file_digest(manifest), profile={"splits": profile, "cache": dc.cache or ""},
                         schema={"columns": MANIFEST_SCHEMA.names})
    return failure


def log_skips(logger: tracking.RunLogger, skips: dict[str, tuple[Any, int]], dc) -> Exception | None:
    """Record every stream's skipped videos (``data/skipped_<split>.json``, and the count as ``data/skipped/<split>``);
    returns the :class:`BadInputError` of a split above ``data.max_skip_fraction``, if one is."""
    from_split = {"train": dc.train_split, "val": dc.val_split, "test": dc.test_split}
    failure = None
    for role, (log, total) in skips.items():
        rep = log.report(total)
        split = from_split[role]
        logger.metrics({f"data/skipped/{split}": float(rep.num_skipped)}, 0)
        if rep.num_skipped:
            logger.text(json.dumps(rep.to_dict(), indent=1), f"data/skipped_{split}.json")
        if failure is None:
            try:
                check_skips(log, total, split)
            except BadInputError as e:
                failure = e
    return failure
