"""Train a text-video retrieval model on Ray Train (DDP: gloo on CPU, nccl on GPU), tracked in MLflow.

Local (starts a private Ray with its own temp dir):
    glccl train --config configs/demo.yaml train.epochs=2 model.head=meanp
An existing cluster:
    glccl train --config configs/msrvtt.yaml --address 127.0.0.1:6380        # or RAY_ADDRESS=...
As a Ray job (the entrypoint is this module):
    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env cluster/runtime_env.yaml \
        -- python -m pipelines.train --config configs/msrvtt.yaml

Resuming = running again with the same ``name`` (Ray Train V2 restores the last checkpoint of that run; the MLflow run
is continued, not duplicated). Worker failures restart from the last checkpoint (``train.max_failures``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glccl.config import ConfigError, RunConfig, flatten, load_config, to_dict
from glccl.safe_load import load_tensors
from pipelines import tracking
from pipelines.report import RANKS_ARTIFACT

CKPT_STATE = "state.pt"
CKPT_BEST = "best_model.pt"
SELECT_METRIC = "t2v/R@1"


# ---------------------------------------------------------------------------------------------------------------------
# data


def ensure_manifest(data_cfg, run_dir: Path) -> Path:
    """The run's manifest: ``data.manifest`` if given, else built from ``data.root`` for the three splits."""
    import pyarrow as pa

    from glccl.data.manifest import build_manifest, write_manifest

    if data_cfg.manifest:
        return Path(data_cfg.manifest)
    if data_cfg.dataset == "synth":
        from pipelines.demo import ensure_synth

        ensure_synth(Path(data_cfg.root))
    splits = dict.fromkeys([data_cfg.train_split, data_cfg.val_split, data_cfg.test_split])
    tables = [build_manifest(data_cfg.dataset, data_cfg.root, split, video_dir=data_cfg.video_dir) for split in splits]
    path = run_dir / "manifest.parquet"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(pa.concat_tables(tables), path)
    return path


def ensure_cache(data_cfg, manifest: Path, num_frames: int, size: int) -> None:
    """Write the parquet frame cache for the splits that lack one (each video decoded once, with Ray Data)."""
    from pipelines import data as pdata

    splits = dict.fromkeys([data_cfg.train_split, data_cfg.val_split, data_cfg.test_split])
    missing = [s for s in splits if not (Path(data_cfg.cache) / s / "meta.json").is_file()]
    if not missing:
        return
    print(f"[glccl] writing the frame cache {data_cfg.cache} for {missing}", flush=True)
    summary = pdata.prepare_cache(manifest, missing, data_cfg.cache, num_frames=num_frames, size=size,
                                  decoder=data_cfg.decoder, timeout_s=data_cfg.decode_timeout_s, strict=data_cfg.strict,
                                  max_skip_fraction=data_cfg.max_skip_fraction, progress=False)
    if summary["exceeded"]:
        raise RuntimeError(f"frame cache {data_cfg.cache}: more than {data_cfg.max_skip_fraction:.0%} of the videos "
                           f"were skipped as bad input (see skipped.json in each split folder)")


def prepare_data(cfg: RunConfig, storage: Path) -> dict[str, Any]:
    """Build (or reuse) the manifest, the Ray datasets and the evaluation texts for the run."""
    import ray.data

    from pipelines import data as pdata

    # The training loop draws its own progress bar; Ray Data's per-operator bars, forwarded from the split coordinator
    # through Ray's log monitor, flood a non-terminal log (~0.5 MB per run) and cost CPU the two workers need.
    # The datasets keep the context they were created with.
    data_ctx = ray.data.DataContext.get_current()
    data_ctx.enable_progress_bars = False
    data_ctx.print_on_execution_start = False
    manifest = ensure_manifest(cfg.data, storage / cfg.name)
    dc = cfg.data
    features = bool(dc.cache) and check_feature_cache(cfg)
    if dc.cache and not features:
        ensure_cache(dc, manifest, cfg.model.num_frames, _image_size(cfg))
    common = dict(num_frames=cfg.model.num_frames, size=_image_size(cfg), max_words=cfg.model.max_words,
                  decoder=dc.decoder, cache=dc.cache, num_cpus=dc.decode_cpus, timeout_s=dc.decode_timeout_s,
                  strict=dc.strict, batch_size=dc.decode_batch_size)
    datasets = {
        "train": pdata.video_dataset(manifest, dc.train_split, train=True, mode="pairs", seed=cfg.train.seed, **common),
        "val": pdata.video_dataset(manifest, dc.val_split, train=False, mode="videos", **common),
        "test": pdata.video_dataset(manifest, dc.test_split, train=False, mode="videos", **common),
    }
    texts = {}
    for key, split in (("val", dc.val_split), ("test", dc.test_split)):
        tokens, t2v, captions, video_ids = pdata.eval_texts(manifest, split, cfg.model.max_words)
        texts[key] = {"tokens": tokens.numpy(), "text_to_video": t2v.numpy(), "captions": captions,
                      "video_ids": video_ids}
    num_pairs = len(pdata.split_items(manifest, dc.train_split)["captions"])
    return {"datasets": datasets, "texts": texts, "num_train_pairs": num_pairs, "manifest": str(manifest),
            "frozen_tower": features}


def check_feature_cache(cfg: RunConfig) -> bool:
    """Whether ``data.cache`` is a feature cache (``glccl data features``); if so, that every split of the run has one
    and that it was computed by this run's frame tower (``model.pretrained``), else ``ConfigError`` naming the key."""
    from pipelines import data as pdata

    dc = cfg.data
    splits = list(dict.fromkeys([dc.train_split, dc.val_split, dc.test_split]))
    metas = {s: pdata.read_cache_meta(dc.cache, s) for s in splits if (Path(dc.cache) / s / "meta.json").is_file()}
    kinds = {s: bool(m.get("feature_dim")) for s, m in metas.items()}
    if not any(kinds.values()):
        return False
    if len(metas) < len(splits) or not all(kinds.values()):
        missing = [s for s in splits if not kinds.get(s)]
        raise ConfigError(f"config key 'data.cache': {dc.cache} is a feature cache without features for split(s) "
                          f"{', '.join(missing)}: run `glccl data features` for them")
    from glccl.model import create_model_from_config

    tower = pdata.tower_fingerprint(create_model_from_config(cfg.model))
    for split, meta in metas.items():
        if meta["tower"]["fingerprint"] != tower:
            raise ConfigError(f"config key 'model.pretrained': the feature cache {Path(dc.cache) / split} was computed "
                              f"by another frame tower (preset {meta['tower']['preset']}); set model.pretrained to the "
                              f"checkpoint the features were computed with")
    return True


def _image_size(cfg: RunConfig) -> int:
    from glccl.model import preset_image_size

    return preset_image_size(cfg.model.preset)


# ---------------------------------------------------------------------------------------------------------------------
# worker side


def _rng_state() -> dict[str, Any]:
    """The RNG states as tensors and plain values only (a checkpoint loads with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"bit_generator": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])


def _evaluate(model, split: str, texts: dict[str, Any], cfg: RunConfig, device) -> tuple[dict[str, float], Any]:
    """Distributed evaluation: each rank encodes its video shard and its slice of texts; features and score rows are
    gathered; the similarity matrix is built in blocks through the head (bounded memory)."""
    import ray.train

    from glccl import distributed as gdist
    from glccl import engine
    from glccl.metrics import retrieval_metrics
    from glccl.similarity import similarity_matrix

    core = engine.unwrap(model)
    shard = ray.train.get_dataset_shard(split)
    from pipelines.data import torch_dtypes

    batches = shard.iter_torch_batches(batch_size=cfg.train.eval_batch_size, drop_last=False,
                                       dtypes=torch_dtypes("videos"))
    vids = engine.encode_videos(core, batches, device=device)
    frames = gdist.gather_no_grad(vids["frames"].to(device)).cpu()
    fmask = gdist.gather_no_grad(vids["frame_mask"].to(torch.uint8).to(device)).cpu().bool()
    vindex = gdist.gather_no_grad(vids["video_index"].to(device)).cpu()
    order = torch.argsort(vindex)
    frames, fmask, vindex = frames[order], fmask[order], vindex[order]

    tokens = torch.as_tensor(texts["tokens"])
    t2v_global = torch.as_tensor(texts["text_to_video"])
    column = {int(v): i for i, v in enumerate(vindex.tolist())}
    keep = torch.tensor([int(v) in column for v in t2v_global.tolist()], dtype=torch.bool)
    dropped = int((~keep).sum())  # captions whose video was skipped as bad input
    tokens, t2v_global = tokens[keep], t2v_global[keep]
    t2v = torch.tensor([column[int(v)] for v in t2v_global.tolist()], dtype=torch.long)

    world, rank = gdist.world_size(), gdist.rank()
    lo = (tokens.shape[0] * rank) // world
    hi = (tokens.shape[0] * (rank + 1)) // world
    tfeat = engine.encode_texts(core, tokens[lo:hi], batch_size=cfg.train.eval_batch_size, device=device)
    with torch.no_grad():
        rows = similarity_matrix(core.head, {k: v.to(device) for k, v in tfeat.items()},
                                 {"frames": frames.to(device), "frame_mask": fmask.to(device)},
                                 video_chunk=cfg.model.sim_chunk)
    sim = gdist.gather_no_grad(rows.float()).cpu()
    metrics = retrieval_metrics(sim, t2v)
    metrics["num_texts"] = float(sim.shape[0])
    metrics["num_videos"] = float(sim.shape[1])
    metrics["skipped_captions"] = float(dropped)
    info = {"sim": sim, "t2v": t2v, "video_index": vindex, "keep": keep}
    return metrics, info


def _save_checkpoint(directory: Path, core, optimizer, scheduler, counters: dict[str, Any], best_state) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": _rng_state(), **counters}, directory / CKPT_STATE)
    torch.save(best_state if best_state is not None else core.state_dict(), directory / CKPT_BEST)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    from tqdm import tqdm

    from glccl import distributed as gdist
    from glccl import engine
    from glccl.losses import loss_from_config
    from glccl.model import create_model_from_config
    from glccl.optim import build_optimizer, build_scheduler

    cfg: RunConfig = load_config(config["cfg"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(tc.cpus_per_worker)))
    torch.manual_seed(tc.seed)  # identical init on every rank
    np.random.seed(tc.seed + rank)
    random.seed(tc.seed + rank)

    model = create_model_from_config(cfg.model).to(device)
    if config.get("frozen_tower"):  # trained from a feature cache: the frame tower that computed it stays fixed
        model.clip.visual.requires_grad_(False)
    loss_fn = loss_from_config(engine.unwrap(model).head, cfg.loss)
    local_bs = tc.batch_size // world
    steps_per_epoch = max(1, config["num_train_pairs"] // tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs
    if tc.max_steps:
        total_steps = min(total_steps, tc.max_steps)
    optimizer = build_optimizer(model, tc.lr, tc.coef_lr, tc.weight_decay, tuple(tc.betas), tc.eps)
    scheduler = build_scheduler(optimizer, total_steps, tc.warmup_fraction)

    step, start_epoch, skip_batches = 0, 0, 0
    best = {"metric": -1.0, "epoch": -1}
    best_state = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_tensors(Path(d) / CKPT_STATE, "training checkpoint")  # weights_only: no pickled code
            best_state = load_tensors(Path(d) / CKPT_BEST, "training checkpoint")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        step, start_epoch, skip_batches = state["step"], state["epoch"], state["batch_in_epoch"]
        best = state["best"]
        if rank == 0:
            print(f"[glccl] resumed from checkpoint: step {step}, epoch {start_epoch}, batch {skip_batches}", flush=True)

    model = ray.train.torch.prepare_model(model)
    core = engine.unwrap(model)
    logger = tracking.RunLogger(config["tracking_uri"], config["run_id"]) if rank == 0 else None

    def report(metrics: dict[str, float], epoch: int, batch_in_epoch: int, with_ckpt: bool = True) -> None:
        counters = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "best": best}
        metrics = {**metrics, "step": step, "epoch": epoch}
        if logger is not None:
            logger.flush()  # a run resumed from this checkpoint continues after the steps logged so far
        if with_ckpt and rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                _save_checkpoint(Path(tmp), core, optimizer, scheduler, counters, best_state)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)

    def finished(s: int) -> bool:
        return bool(tc.max_steps) and s >= tc.max_steps

    from pipelines.data import torch_dtypes

    train_shard = ray.train.get_dataset_shard("train")
    dtypes = torch_dtypes("pairs")
    # rows of ~8 blocks mixed into every batch (the blocks are reordered every epoch; their rows were shuffled once)
    shuffle_buffer = max(local_bs * 4, 8 * cfg.data.decode_batch_size, 64)
    try:
        for epoch in range(start_epoch, tc.epochs):
            if finished(step):
                break
            t0, data_wait, n_batches = time.perf_counter(), 0.0, 0
            it = iter(train_shard.iter_torch_batches(batch_size=local_bs, drop_last=True, dtypes=dtypes,
                                                     local_shuffle_buffer_size=shuffle_buffer))
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=rank != 0,
                       mininterval=5.0, file=sys.stderr)
            batch_in_epoch = 0
            while batch_in_epoch < steps_per_epoch and not finished(step):
                tw = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    break
                data_wait += time.perf_counter() - tw
                batch_in_epoch += 1
                if batch_in_epoch <= skip_batches:  # data position of a mid-epoch checkpoint
                    bar.update(1)
                    continue
                batch = {k: batch[k].to(device) for k in ("tokens", "frames", "frame_mask")}
                logs = engine.train_step(model, loss_fn, batch, optimizer, scheduler, grad_clip=tc.grad_clip,
                                         logit_scale_max=cfg.loss.logit_scale_max, device=device)
                step += 1
                n_batches += 1
                _maybe_inject_fault(config.get("fault"), step, rank)
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)  # drawn at most every 5 s
                if logger is not None:
                    logger.metrics(logs, step, prefix="train/", buffer=True)
                if tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0 and batch_in_epoch < steps_per_epoch:
                    report({"train/loss": logs["loss"]}, epoch, batch_in_epoch)
            bar.close()
            if logger is not None:
                logger.flush()
            skip_batches = 0
            elapsed = time.perf_counter() - t0
            val, _ = _evaluate(model, "val", config["texts"]["val"], cfg, device)
            if val[SELECT_METRIC] > best["metric"]:  # selection on validation, never on test
                best = {"metric": val[SELECT_METRIC], "epoch": epoch}
                best_state = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
            epoch_logs = {"data_wait_share": data_wait / max(elapsed, 1e-9), "epoch_time_s": elapsed,
                          "samples_per_s": n_batches * tc.batch_size / max(elapsed, 1e-9)}
            if logger is not None:
                logger.metrics({**{f"val/{k}": v for k, v in val.items()}, **{f"train/{k}": v for k, v in epoch_logs.items()}},
                               step)
                print(f"[glccl] epoch {epoch + 1}/{tc.epochs} step {step} val t2v R@1 {val['t2v/R@1']:.1f} "
                      f"v2t R@1 {val['v2t/R@1']:.1f} ({elapsed:.1f}s, data wait {epoch_logs['data_wait_share']:.0%})",
                      flush=True)
            report({f"val/{k}": v for k, v in val.items()}, epoch + 1, 0)
    except BaseException:
        if logger is not None:  # the buffered step metrics of a failing run are kept
            logger.flush()
        raise

    # test once, with the best-on-validation weights
    if best_state is not None:
        core.load_state_dict(best_state)
    test, info = _evaluate(model, "test", config["texts"]["test"], cfg, device)
    if logger is not None:
        logger.metrics({f"test/{k}": v for k, v in test.items()}, step)
        _log_test_artifacts(logger, test, info, config["texts"]["test"])
        print("[glccl] test " + " ".join(f"{k} {v:.1f}" for k, v in test.items() if "/" in k), flush=True)
    final = {**{f"test/{k}": v for k, v in test.items()}, "best_epoch": best["epoch"], "best_val": best["metric"]}
    report(final, tc.epochs, 0)
    gdist.barrier()


def _maybe_inject_fault(fault: dict[str, Any] | None, step: int, rank: int) -> None:
    """Test hook (never set by configs): once per marker file, kill this worker process (SIGKILL) or raise at a step."""
    if not fault or step != fault["at_step"] or rank != fault.get("rank", 0):
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.write_text(f"{os.getpid()} step {step}")
    if fault["kind"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected failure at step {step}")


def _log_test_artifacts(logger: tracking.RunLogger, test: dict[str, float], info: dict[str, Any],
                        texts: dict[str, Any]) -> None:
    """Final metrics table, top-5 retrievals for sample queries, and the recall@K curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from glccl.metrics import recall_at_k_curve, retrieval_ranks

    logger.table({"metric": list(test), "value": [float(v) for v in test.values()]}, "metrics/test_metrics.json")
    sim, t2v, vindex = info["sim"], info["t2v"], info["video_index"]
    keep = info["keep"].numpy()
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
    ks = [1, 2, 3, 5, 10, 20, 50]
    curve = recall_at_k_curve(sim, t2v, ks)
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


# ---------------------------------------------------------------------------------------------------------------------
# driver side


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS``, or start a private local Ray (own temp dir, dashboard on a free port,
    own token, listening on 127.0.0.1 only: ``pipelines.private_ray``)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    tmp = tempfile.mkdtemp(prefix="glccl-ray-", dir="/tmp")
    # The dashboard serves Ray's state API. Ray Train's PlacementGroupCleaner needs it to notice a controller that
    # died (a sweep trial stopped by its scheduler): without it the run's placement group stays reserved and the next
    # trial's data tasks wait forever for the CPU it holds. The cleaner finds the state API through
    # RAY_API_SERVER_ADDRESS, which every process of this Ray inherits: without it, it looks for "the" local cluster
    # and gives up when other Ray instances run on the machine ("Found multiple active Ray instances").
    from glccl.distributed import free_port
    from pipelines.private_ray import secure_private_ray

    port = free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    restore = secure_private_ray()  # token auth with its own token, every socket on 127.0.0.1
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             _temp_dir=tmp, object_store_memory=2 * 1024**3, configure_logging=False)
    restore()
    atexit.register(_remove_local_ray, tmp)


def _remove_local_ray(tmp: str) -> None:
    """At exit: stop the private local Ray this process started and delete its temp dir (sockets, session logs)."""
    import shutil

    import ray

    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def local_cpus(cfg: RunConfig) -> int:
    """Logical CPUs for a private local Ray: the training workers plus room for the Ray Data decode tasks."""
    return max(os.cpu_count() or 1, int(math.ceil(cfg.train.num_workers * cfg.train.cpus_per_worker)) + 2)


def _local_files_absolute(cfg: RunConfig) -> RunConfig:
    """``model.pretrained`` as an absolute path when it names a local file: Ray Train workers (and sweep trials) run
    in other working directories, where a relative path names nothing."""
    import dataclasses

    pre = cfg.model.pretrained
    if pre and Path(pre).is_file() and not Path(pre).is_absolute():
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=str(Path(pre).resolve())))
    return cfg


def loss_params(cfg: RunConfig) -> dict[str, Any]:
    """The run's resolved loss as MLflow params: ``loss.recipe`` (e.g. ``infonce + sdr``) and ``loss.terms``."""
    from glccl.heads import get_head_class
    from glccl.losses import loss_from_config, loss_recipe

    head = get_head_class(cfg.model.head)
    loss = loss_from_config(head, cfg.loss)
    return {"loss.recipe": loss_recipe(head, loss), "loss.terms": ",".join(loss.terms + head.aux_loss_names)}


def run(cfg: RunConfig, address: str | None = None, extra_tags: dict[str, str] | None = None,
        parent_run_id: str | None = None, callbacks: list | None = None,
        fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train, evaluate and track one run; returns its final metrics. Ends the MLflow run FINISHED or FAILED.

    ``callbacks`` go to Ray Train's RunConfig (e.g. Tune's ``TuneReportCallback`` in a sweep trial); ``fault`` is a
    test hook that kills or fails one worker once at a given step.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = _local_files_absolute(cfg)
    storage = Path(cfg.storage).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    init_ray(address, local_cpus(cfg))
    data = prepare_data(cfg, storage)
    uri = tracking.default_tracking_uri(storage)
    params = {**flatten(to_dict(cfg)), **loss_params(cfg)}
    run_id, resumed = tracking.start_or_resume_run(uri, cfg.experiment, cfg.name, params,
                                                   tags=extra_tags, parent_run_id=parent_run_id)
    logger = tracking.RunLogger(uri, run_id)
    print(f"[glccl] MLflow run {run_id} ({'resumed' if resumed else 'new'}) in {uri}", flush=True)
    status = "FAILED"
    try:
        import yaml

        logger.text(yaml.safe_dump(to_dict(cfg), sort_keys=False), "config/resolved.yaml")
        from pipelines.torch_store import LocalStoreTorchConfig

        trainer = TorchTrainer(
            train_loop_per_worker,
            torch_config=LocalStoreTorchConfig(),  # the ranks' rendezvous store off the network
            train_loop_config={"cfg": to_dict(cfg), "run_id": run_id, "tracking_uri": uri,
                               "texts": data["texts"], "num_train_pairs": data["num_train_pairs"],
                               "frozen_tower": data["frozen_tower"], "fault": fault},
            scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                                   resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
            run_config=ray.train.RunConfig(
                name=cfg.name, storage_path=str(storage / "ray"),
                failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2), callbacks=callbacks),
            datasets=data["datasets"],
        )
        result = trainer.fit()
        metrics = dict(result.metrics or {})
        if result.checkpoint is not None:
            _log_best_model(cfg, logger, result.checkpoint)
        status = "FINISHED"
        return {"run_id": run_id, "tracking_uri": uri, "metrics": metrics,
                "checkpoint": result.checkpoint.path if result.checkpoint else None}
    except SystemExit as e:
        if not e.code:  # Tune stops a trial (ASHA, max_t, time budget) with SystemExit(0) at its next report
            status = "FINISHED"
            logger.tag(tracking.STOPPED_EARLY_TAG, "1")
        raise
    except BaseException as e:
        # or Tune removed the trial's placement group, killing the Train controller: the sweep driver then tags the
        # run as stopped early (see sweeps.tune), and that is not a failure
        if not tracking.stopped_early(uri, run_id):
            logger.tag("glccl.error", f"{type(e).__name__}: {e}"[:4000])
        raise
    finally:
        if status == "FAILED" and tracking.stopped_early(uri, run_id):
            status = "FINISHED"
        tracking.end_run(uri, run_id, status)


def _log_best_model(cfg: RunConfig, logger: tracking.RunLogger, checkpoint) -> None:
    """Log the best-on-validation weights as an MLflow model (safetensors + JSON config, no pickle:
    ``pipelines.mlflow_model``), and keep a plain copy next to the run's checkpoints."""
    import mlflow

    from glccl.model import create_model_from_config
    from pipelines import mlflow_model

    with checkpoint.as_directory() as d:
        best = load_tensors(Path(d) / CKPT_BEST, "training checkpoint")
        dest = Path(cfg.storage).resolve() / cfg.name / "best_model.pt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": best, "config": to_dict(cfg)}, dest)
    create_model_from_config(cfg.model).load_state_dict(best)  # the weights fit the config before they are logged
    with tracking.fluent_uri(logger.uri), mlflow.start_run(run_id=logger.run_id):
        # explicit requirements skip MLflow's slow inference
        info = mlflow_model.log_model(best, to_dict(cfg), ["glccl", "torch==2.13.0", "open_clip_torch==3.3.0"])
    logger.tag("glccl.best_model_path", str(dest))
    logger.tag("glccl.best_model_uri", info.model_uri)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="glccl train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="run config YAML (configs/*.yaml)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a private local Ray)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 model.head=meanp")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"glccl train: {e}", file=sys.stderr)
        return 2
    out = run(cfg, address=args.address)
    print(json.dumps({k: v for k, v in out["metrics"].items() if k.startswith("test/")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
