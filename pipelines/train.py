"""Train a text-video retrieval model on Ray Train (DDP: gloo on CPU, nccl on GPU), tracked in MLflow.

Local (starts a private Ray with its own temp dir):
    glccl train --config configs/demo.yaml train.epochs=2 model.head=meanp
An existing cluster:
    glccl train --config configs/msrvtt.yaml --address 127.0.0.1:6380        # or RAY_ADDRESS=...
As a Ray job (the entrypoint is this module):
    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env cluster/runtime_env.yaml \
        -- python -m pipelines.train --config configs/msrvtt.yaml

Resuming = running again with the same ``name`` (Ray Train V2 restores the last checkpoint of that run; the MLflow run
is continued, not duplicated). Worker failures restart from the last checkpoint (``scaling.max_failures``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import yaml
from ray.train.torch import TorchTrainer
from tqdm import tqdm

from glccl import distributed as gdist
from glccl import engine
from glccl.config import ConfigError, RunConfig, flatten, load_config, to_dict
from glccl.evaluation import RetrievalResult, evaluate_retrieval
from glccl.losses import loss_from_config
from glccl.model import create_model_from_config
from glccl.optim import build_optimizer, build_scheduler
from pipelines import checkpoints, preflight, ray_session, run_data, run_record, tracking
from pipelines.data import check_skips, torch_dtypes
from pipelines.torch_store import LocalStoreTorchConfig

SELECT_METRIC = "t2v/R@1"

StepCallback = Callable[[int, int], None]
"""Called on every worker after each optimiser step with (step, rank): a place to observe or perturb a run (the
failure-recovery tests kill a worker from one) without touching the loop."""


# ---------------------------------------------------------------------------------------------------------------------
# setup (driver)


def resolve_local_files(cfg: RunConfig) -> RunConfig:
    """``model.pretrained`` as an absolute path when it names a local file: Ray Train workers (and sweep trials) run
    in other working directories, where a relative path names nothing."""
    pre = cfg.model.pretrained
    if pre and Path(pre).is_file() and not Path(pre).is_absolute():
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=str(Path(pre).resolve())))
    return cfg


# ---------------------------------------------------------------------------------------------------------------------
# train and evaluate (each worker)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: set up, train epoch by epoch (validating and checkpointing after each), then test once
    with the best-on-validation weights. Rank 0 writes to the MLflow run the driver created."""
    cfg: RunConfig = load_config(config["cfg"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
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
            state, best_state = checkpoints.load_train_state(Path(d))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoints.set_rng_state(state["rng"])
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
                checkpoints.save_train_state(Path(tmp), core, optimizer, scheduler, counters, best_state)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)

    def finished(s: int) -> bool:
        return bool(tc.max_steps) and s >= tc.max_steps

    skips = config.get("skips") or {}

    def check_stream(*roles: str) -> None:  # every rank asks, so every rank stops at the same point
        for role in roles:
            if role in skips:
                log, total = skips[role]
                check_skips(log, total, getattr(cfg.data, f"{role}_split"))

    check_stream("train", "val")  # a restarted worker stops at once when its earlier pass already passed the limit
    callbacks = config.get("step_callbacks") or []
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
                for callback in callbacks:
                    callback(step, rank)
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
            val = _evaluate(model, "val", config["texts"]["val"], cfg, device).metrics
            check_stream("train", "val")
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
    result = _evaluate(model, "test", config["texts"]["test"], cfg, device)
    check_stream("test")
    test = result.metrics
    if logger is not None:
        logger.metrics({f"test/{k}": v for k, v in test.items()}, step)
        run_record.log_test_artifacts(logger, result, config["texts"]["test"])
        print("[glccl] test " + " ".join(f"{k} {v:.1f}" for k, v in test.items() if "/" in k), flush=True)
    final = {**{f"test/{k}": v for k, v in test.items()}, "best_epoch": best["epoch"], "best_val": best["metric"]}
    report(final, tc.epochs, 0)
    gdist.barrier()


def _evaluate(model, split: str, texts: dict[str, Any], cfg: RunConfig, device) -> RetrievalResult:
    """Evaluation on this worker's shard of ``split``; every rank returns the same gathered result."""
    shard = ray.train.get_dataset_shard(split)
    batches = shard.iter_torch_batches(batch_size=cfg.train.eval_batch_size, drop_last=False,
                                       dtypes=torch_dtypes("videos"))
    return evaluate_retrieval(model, batches, texts["tokens"], texts["text_to_video"],
                              batch_size=cfg.train.eval_batch_size, video_chunk=cfg.model.sim_chunk, device=device)


# ---------------------------------------------------------------------------------------------------------------------
# the run (driver): data, MLflow run, TorchTrainer, record


def run(cfg: RunConfig, address: str | None = None, extra_tags: dict[str, str] | None = None,
        parent_run_id: str | None = None, callbacks: list | None = None,
        step_callbacks: list[StepCallback] | None = None) -> dict[str, Any]:
    """Train, evaluate and track one run; returns its final metrics. Ends the MLflow run FINISHED or FAILED.

    ``callbacks`` go to Ray Train's RunConfig (e.g. Tune's ``TuneReportCallback`` in a sweep trial);
    ``step_callbacks`` run on every worker after each step (see ``StepCallback``; they travel pickled).
    """
    cfg = resolve_local_files(cfg)
    storage = Path(cfg.storage).resolve()
    manifest = preflight.check_run(cfg, storage)  # what can be checked is checked before Ray starts
    ray_session.connect(address, num_cpus=ray_session.local_cpus(cfg), dashboard=True, object_store_mb=2048)
    data = run_data.prepare(cfg, storage, manifest)
    uri = tracking.default_tracking_uri(storage)
    params = {**flatten(to_dict(cfg)), **run_record.loss_params(cfg)}
    run_id, resumed = tracking.start_or_resume_run(uri, cfg.experiment, cfg.name, params,
                                                   tags=extra_tags, parent_run_id=parent_run_id)
    logger = tracking.RunLogger(uri, run_id)
    print(f"[glccl] MLflow run {run_id} ({'resumed' if resumed else 'new'}) in {uri}", flush=True)
    with tracking.run_status(uri, run_id):
        logger.text(yaml.safe_dump(to_dict(cfg), sort_keys=False), "config/resolved.yaml")
        trainer = TorchTrainer(
            train_loop_per_worker,
            torch_config=LocalStoreTorchConfig(),  # the ranks' rendezvous store off the network
            train_loop_config={"cfg": to_dict(cfg), "run_id": run_id, "tracking_uri": uri,
                               "texts": data.texts, "num_train_pairs": data.num_train_pairs, "skips": data.skips,
                               "frozen_tower": data.frozen_tower, "step_callbacks": list(step_callbacks or [])},
            scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                                   resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
            run_config=ray.train.RunConfig(
                name=cfg.name, storage_path=str(storage / "ray"),
                failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2), callbacks=callbacks),
            datasets=data.datasets,
        )
        try:
            result = trainer.fit()
        except Exception:
            skip_failure = run_record.log_data(logger, cfg, data)  # the skip lists, and the reason if it is one
            if skip_failure is not None:
                raise skip_failure from None
            raise
        run_record.log_data(logger, cfg, data)
        if result.checkpoint is not None:
            run_record.log_best_model(cfg, logger, result.checkpoint)
    return {"run_id": run_id, "tracking_uri": uri, "metrics": dict(result.metrics or {}),
            "checkpoint": result.checkpoint.path if result.checkpoint else None}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="glccl train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="run config YAML (configs/*.yaml)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a private local Ray)")
    p.add_argument("--register", default=None, metavar="NAME",
                   help="register the best model in the MLflow model registry as NAME (train.register_model)")
    p.add_argument("overrides", nargs="*",
                   help="key=value overrides, e.g. train.lr=3e-4 model.head=meanp (`glccl config --list` lists every key)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        extra = [f"train.register_model={args.register}"] if args.register else []
        cfg = load_config(args.config, [*args.overrides, *extra])
    except ConfigError as e:
        print(f"glccl train: {e}", file=sys.stderr)
        return 2
    out = run(cfg, address=args.address)
    print(json.dumps({k: v for k, v in out["metrics"].items() if k.startswith("test/")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
