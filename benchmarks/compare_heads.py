"""Every similarity head side by side (issue 8, item 2): retrieval accuracy on the synthetic partial-relevance
benchmark at several video lengths, and the cost of the similarity stage, in one table, one plot and one MLflow run.

    .venv/bin/python benchmarks/compare_heads.py --threads 2                  # all heads, K = 12, 32, 64 (~30 min)
    .venv/bin/python benchmarks/compare_heads.py --heads glccl,meanp --frames 12 --steps 40   # a quick look
    .venv/bin/python benchmarks/compare_heads.py --skip-accuracy              # cost only (minutes)

Time on 2 CPU cores (estimated from steps timed at 1 thread, batch 32, 7 heads): tower ~4 min (250 steps of batch 64
at K = 12, once: cached), frame features < 1 min, heads ~12-18 min (200 steps per run; one step of all 7 heads costs
~1.3 s at K = 12, ~1.6 s at K = 32, ~2.5 s at K = 64, tcmgc / glscl / glccl the slowest, meanp ~0.08 s), evaluation
< 1 min, cost ~3 min, plus generating and decoding the three synthetic sets the first time: ~25-30 min in all.

**Accuracy: a shared, frozen frame tower.** Training every head end to end (frame tower included) at K = 12, 32 and 64
does not fit a CPU budget: the frame tower's forward/backward dominates a step (2 cores, batch 32: ~0.45 s at K = 12,
~2.4 s at K = 64), so 21 runs in 30 minutes get ~45 steps each and every head stays at chance, while a from-scratch
``tiny-rn`` model needs ~250 steps of batch 64 to get off the floor. So the heads share one frame tower:

1. *Tower* (once; cached under ``--data-root``/towers/tower-<hash>.pt with its settings in the .json beside it,
   reused while the settings match): a ``--preset`` model (default ``tiny-rn``: CLIP ModifiedResNet frame tower) with
   the **meanp** head is trained end to end on the K = ``--tower-frames`` (12) set with ``glccl.engine.train_step``:
   ``--tower-steps`` (250) steps of batch ``--tower-batch-size`` (64), lr ``--lr`` (1e-3), CLIP x ``--coef-lr`` (1),
   weight decay ``--weight-decay`` (0.2), 10 % warm-up + cosine (``glccl.optim``), initial scale ``--logit-scale``
   (30). MeanP on purpose: it is the baseline, so the shared tower is not shaped by (biased toward) GLCCL or any other
   head under test.
2. *Frame features* (once per K): with that tower frozen (eval mode), every video of every K set is encoded frame by
   frame (``model.encode_frames`` -> ``[N, K, D]``; the frame tower is per frame, hence K-agnostic) and kept in memory.
3. *Heads* (per head and K): ``create_model(preset, pretrained=<tower file>, head=h, num_frames=K,
   logit_scale_init=--logit-scale)``: the tower's CLIP weights are loaded strictly into ``model.clip`` (text tower
   included), the temporal encoder is initialised from that CLIP's text transformer as in the full recipe (CLIP4Clip's
   initialisation), ``model.clip.visual`` is frozen, and the text tower + temporal encoder + head + logit scale are trained from
   the cached frame features (``--steps`` steps of batch ``--batch-size``, same lr / weight decay / schedule) with
   ``glccl.engine.train_step`` itself: the model is wrapped in :class:`CachedFrames`, whose forward runs
   ``encode_text`` and ``temporal_encode`` on the features, so the step (losses incl. the heads' ``aux_losses``,
   grad clip, scale clamp) is the library's. Every head starts from the same seed and sees the same batches.

Each K has its own synthetic set (``glccl.data.synth.generate``) under ``--data-root``/K{K}: longer videos for larger
K, holding more events (default schedule: K = 12 -> 2-4 events in 5 s, 32 -> 4-6 in 7.5 s, 64 -> 7-11 in 13.75 s at
10 fps; ``--events`` / ``--seconds`` override it), so a caption (one event, or two consecutive ones) covers a smaller
part of its video as K grows. Every video is decoded once (K frames at the segment centres, at the model's image
size). The test split (one caption per video that matches that video only; chance R@1 = 1 / videos) is scored from the
cached frame features (``temporal_encode``) with ``glccl.similarity.similarity_matrix`` and
``glccl.metrics.retrieval_metrics``: t2v / v2t R@1, R@5, MnR. What this measures: how well each head (with its
temporal encoder and text tower) uses a fixed set of frame features, not how well it would shape the frame tower.

**Cost.** Per head and K: the similarity stage of ``--cost-n`` texts x ``--cost-n`` videos of random features at the
real model's widths (``--cost-dim`` 512, ``--cost-words`` 32; all words and frames valid), measured by
``benchmarks/similarity.py``'s ``measure`` in a fresh subprocess per point (median wall time of ``--cost-reps`` runs,
sub-problem + extrapolation past ``--cost-max-run-s``, peak memory above the inputs at the full size), the analytic
FLOPs (``<head>_flops``) and the head's parameter count.

**Output.** A markdown table (printed, written to ``--out-dir``/compare_heads.md and into ``--bench-md`` as the
section "## Heads compared (benchmarks/compare_heads.py)", replacing that section and keeping the rest of the file), a
PNG (accuracy vs cost, cost vs K), the raw results as JSON, and one MLflow run (``--experiment``, run name
``--run-name``) with every number as a metric (the tower's training curve under ``tower/K{K}/train/``) and the table,
plot and JSON as artifacts. The conclusion lines under the table are computed from the measured numbers (binomial
standard errors on the test captions included).

Needs only the ``glccl`` library, mlflow and matplotlib (no Ray). Exit status 1 when a head failed to train or
evaluate (the others are still reported).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import similarity as simbench  # noqa: E402  (machine(), measure(), method_flops(), PeakMemory)

SECTION = "## Heads compared (benchmarks/compare_heads.py)"
DEFAULT_FRAMES = (12, 32, 64)
METRICS = ("t2v/R@1", "t2v/R@5", "t2v/MnR", "v2t/R@1", "v2t/R@5", "v2t/MnR")


def log(msg: str) -> None:
    print(f"[compare-heads] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# data: one synthetic set per K, decoded once


def video_spec(K: int, fps: int = 10, events: tuple[int, int] | None = None, seconds: float | None = None) -> dict:
    """Events per video and video length for K sampled frames: longer videos hold more events as K grows.

    Default: ``mid = max(3, round(K / 7))`` events, ``mid +- max(1, round(mid / 4))`` (12 -> 2-4, 32 -> 4-6,
    64 -> 7-11); ``seconds = max(5, 1.25 s per event at the maximum, 1.2 K / fps)`` so that every video has more
    frames than K (12 -> 5 s, 32 -> 7.5 s, 64 -> 13.75 s at 10 fps).
    """
    if events is None:
        mid = max(3, round(K / 7))
        spread = max(1, round(mid / 4))
        events = (max(1, mid - spread), mid + spread)
    if seconds is None:
        seconds = max(5.0, 1.25 * events[1], 1.2 * K / fps)
    return {"K": K, "events": (int(events[0]), int(events[1])), "seconds": float(seconds), "fps": int(fps),
            "frames_per_video": max(4, int(round(fps * seconds)))}


def ensure_data(root: str | os.PathLike, spec: dict, *, num_train: int, num_test: int, size: int, seed: int = 0,
                workers: int | None = None) -> Path:
    """The synthetic set for one K in ``root``/K{K}: reused when its parameters match, (re)generated otherwise."""
    from glccl.data.synth import generate

    out = Path(root) / f"K{spec['K']}"
    want = {"seed": seed, "size": size, "fps": spec["fps"], "seconds": spec["seconds"], "num_train": num_train,
            "num_val": 0, "num_test": num_test, "events": list(spec["events"])}
    meta = out / "synth_meta.json"
    if meta.is_file():
        have = json.loads(meta.read_text()).get("params", {})
        if all(have.get(k) == v for k, v in want.items()):
            return out
    log(f"generating {out} ({num_train} train + {num_test} test videos, {spec['events'][0]}-{spec['events'][1]} "
        f"events, {spec['seconds']:g} s at {spec['fps']} fps, {size} px)")
    t0 = time.perf_counter()
    generate(out, num_train=num_train, num_val=0, num_test=num_test, seed=seed, size=size, fps=spec["fps"],
             seconds=spec["seconds"], events=spec["events"], workers=workers)
    log(f"generated {out} in {time.perf_counter() - t0:.1f} s")
    return out


@dataclasses.dataclass
class Split:
    """Decoded videos of one split: ``frames`` uint8 ``[V, K, H, W, 3]``, ``frame_mask`` ``[V, K]``, captions per video
    and their tokens (``tokens`` ``[C, Nw]``, ``caption_video`` ``[C]``, ``video_captions[v]`` the rows of video v)."""

    video_ids: list[str]
    frames: torch.Tensor
    frame_mask: torch.Tensor
    captions: list[list[str]]
    tokens: torch.Tensor
    caption_video: torch.Tensor
    video_captions: list[np.ndarray]
    feats: torch.Tensor | None = None
    """Cached frame features ``[V, K, D]`` of the frozen tower (``cache_features``; the pixels are then dropped)."""

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)


def load_split(root: str | os.PathLike, split: str, K: int, size: int, max_words: int,
               decoder: str = "decord") -> Split:
    """Decode every video of ``split`` once (K frames at the segment centres, ``size`` px) and tokenise its captions."""
    from glccl.data.frames import load_frames
    from glccl.tokenizer import tokenize

    root = Path(root)
    ids = (root / f"{split}_list.txt").read_text().split()
    caps = json.loads((root / "captions.json").read_text())
    frames = np.empty((len(ids), K, size, size, 3), np.uint8)
    mask = np.empty((len(ids), K), bool)
    for i, vid in enumerate(ids):
        frames[i], mask[i] = load_frames(root / "videos" / f"{vid}.mp4", K, size, train=False, decoder=decoder)
    captions = [list(caps[v]) for v in ids]
    flat = [c for cs in captions for c in cs]
    owner = np.repeat(np.arange(len(ids)), [len(cs) for cs in captions])
    starts = np.concatenate([[0], np.cumsum([len(cs) for cs in captions])])
    return Split(video_ids=ids, frames=torch.from_numpy(frames), frame_mask=torch.from_numpy(mask), captions=captions,
                 tokens=tokenize(flat, max_words) if flat else torch.zeros(0, max_words, dtype=torch.long),
                 caption_video=torch.from_numpy(owner).long(),
                 video_captions=[np.arange(starts[i], starts[i + 1]) for i in range(len(ids))])


def load_data(root: str | os.PathLike, K: int, size: int, max_words: int, decoder: str = "decord") -> dict[str, Split]:
    t0 = time.perf_counter()
    out = {s: load_split(root, s, K, size, max_words, decoder) for s in ("train", "test")}
    log(f"decoded {sum(s.num_videos for s in out.values())} videos of {root} (K={K}, {size} px) in "
        f"{time.perf_counter() - t0:.1f} s")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# training and evaluation (in process)


@dataclasses.dataclass
class Recipe:
    """Training settings (CLI options of the same names): the shared tower's (``tower_*``, stage 1) and the heads'
    (stage 3); lr, weight decay, schedule, clip, η and the initial scale are common to both."""

    preset: str = "tiny-rn"
    tower_frames: int = 12
    """K of the synthetic set the shared frame tower is trained on (stage 1)."""
    tower_steps: int = 250
    tower_batch_size: int = 64
    epochs: int = 3
    steps: int = 200
    """Optimiser steps per (head, K) run on the cached frame features (0: ``epochs`` passes over the videos)."""
    batch_size: int = 32
    captions_per_video: int = 1
    """Captions of each video seen per epoch (distinct ones while the video has enough; a batch never repeats a video)."""
    lr: float = 1e-3
    coef_lr: float = 1.0
    weight_decay: float = 0.2
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    eta: float = 0.5
    logit_scale: float | None = 30.0
    """Initial similarity scale lambda (the model stores ln lambda); None keeps the preset's (CLIP: 1 / 0.07)."""
    logit_scale_max: float = 100.0
    max_words: int = 32
    seed: int = 0
    max_train_s: float = 0.0
    """Stop a head's run after this many seconds of training (0: no limit); the schedule still assumes the full run."""
    eval_batch_size: int = 64

    def tower_recipe(self) -> Recipe:
        """The recipe of stage 1: the tower's batch size and steps, no time limit."""
        return dataclasses.replace(self, batch_size=self.tower_batch_size, steps=self.tower_steps, max_train_s=0.0)


def steps_per_epoch(num_videos: int, recipe: Recipe) -> int:
    return max(1, recipe.captions_per_video * (num_videos // recipe.batch_size))


def total_steps(num_videos: int, recipe: Recipe) -> int:
    return recipe.steps or recipe.epochs * steps_per_epoch(num_videos, recipe)


def epoch_batches(split: Split, recipe: Recipe, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch: ``captions_per_video`` passes over the shuffled videos, one caption per video and pass (each video's
    captions in a random order, so the passes see different captions), cut into batches within a pass (no video twice
    in a batch; the remainder of a pass is dropped); batch order shuffled. Returns ``[(videos, caption rows)]``."""
    b = recipe.batch_size
    if split.num_videos < b:
        raise ValueError(f"batch size {b} > {split.num_videos} training videos")
    orders = [rng.permutation(c) for c in split.video_captions]
    batches = []
    for p in range(recipe.captions_per_video):
        vids = rng.permutation(split.num_videos)
        caps = np.array([orders[v][p % len(orders[v])] for v in vids])
        for i in range(0, len(vids) - b + 1, b):
            batches.append((vids[i:i + b], caps[i:i + b]))
    return [batches[i] for i in rng.permutation(len(batches))]


def batch_stream(split: Split, recipe: Recipe, num_steps: int) -> Iterator[dict[str, torch.Tensor]]:
    """``num_steps`` training batches (``tokens``, ``frames``, ``frame_mask``); the same sequence for every head given
    the seed. ``frames`` are the cached frame features ``[B, K, D]`` when the split has them (``split.feats``), else the
    decoded pixels uint8 ``[B, K, H, W, 3]``."""
    rng = np.random.default_rng([recipe.seed, 1])
    source = split.feats if split.feats is not None else split.frames
    done = 0
    while done < num_steps:
        for vids, caps in epoch_batches(split, recipe, rng):
            if done >= num_steps:
                return
            v, c = torch.from_numpy(vids).long(), torch.from_numpy(caps).long()
            yield {"tokens": split.tokens[c], "frames": source[v], "frame_mask": split.frame_mask[v]}
            done += 1


class CachedFrames(torch.nn.Module):
    """A :class:`glccl.model.GLCCL` fed precomputed CLIP frame features instead of pixels.

    ``forward(tokens, frames, frame_mask)`` takes ``frames`` = frame features ``[B, K, D]`` and returns the model's
    feature dict (``encode_text``, ``temporal_encode``, ``logit_scale``). The model sits in ``.module``, like a DDP
    wrapper, so ``glccl.engine.train_step`` / ``compute_losses`` unwrap it for ``score``, the heads' ``aux_losses`` and
    the logit-scale clamp: the step is the library's, only the frame tower is skipped.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.module = model

    def forward(self, tokens: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        m = self.module
        if frames.ndim != 3:
            raise ValueError(f"CachedFrames takes frame features [B, K, D], got shape {tuple(frames.shape)}")
        if frame_mask is None:
            frame_mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        sentence, words, word_mask = m.encode_text(tokens)
        return {"sentence": sentence, "words": words, "word_mask": word_mask,
                "frames": m.temporal_encode(frames, frame_mask), "frame_mask": frame_mask.bool(),
                "logit_scale": m.logit_scale}


def build_model(head: str, K: int, recipe: Recipe, tower: str | os.PathLike | None = None):
    """The model for one head, from the seed (every head gets the same initialisation of what it shares).

    With ``tower`` (a stage-1 state dict file): its CLIP weights are loaded strictly into ``model.clip`` (the temporal
    encoder is then initialised from that CLIP's text transformer, as with pretrained CLIP) and ``model.clip.visual``
    is frozen. The initial logit scale is ``recipe.logit_scale`` either way.
    """
    from glccl.model import create_model

    torch.manual_seed(recipe.seed)
    model = create_model(recipe.preset, pretrained=os.fspath(tower) if tower else None, head=head, num_frames=K,
                         max_words=recipe.max_words, logit_scale_init=recipe.logit_scale)
    if tower:
        model.clip.visual.requires_grad_(False)
    return model


def fit(model, train: Split, recipe: Recipe, label: str,
        on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict:
    """Train ``model`` with ``glccl.engine.train_step`` on ``batch_stream(train, recipe)``; pixels when ``train`` has
    no cached features, else features through :class:`CachedFrames` (only parameters that require grad are
    optimised). Returns steps done, seconds, final and mean-of-last-10 loss, parameter counts."""
    from glccl import engine
    from glccl.losses import build_loss
    from glccl.optim import build_optimizer, build_scheduler

    loss_fn = build_loss(engine.unwrap(model).head, eta=recipe.eta, logit_scale_max=recipe.logit_scale_max)
    optimizer = build_optimizer(model, recipe.lr, recipe.coef_lr, recipe.weight_decay)
    n_steps = total_steps(train.num_videos, recipe)
    scheduler = build_scheduler(optimizer, n_steps, recipe.warmup_fraction)
    runner = CachedFrames(model) if train.feats is not None else model
    device = torch.device("cpu")
    losses: list[float] = []
    t0 = time.perf_counter()
    step = 0
    for batch in batch_stream(train, recipe, n_steps):
        logs = engine.train_step(runner, loss_fn, batch, optimizer, scheduler, grad_clip=recipe.grad_clip,
                                 logit_scale_max=recipe.logit_scale_max, device=device)
        step += 1
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(f"{label}: non-finite loss {logs['loss']} at step {step}")
        losses.append(logs["loss"])
        if on_step is not None:
            on_step(step, logs)
        if recipe.max_train_s and time.perf_counter() - t0 > recipe.max_train_s:
            break
    seconds = time.perf_counter() - t0
    return {"steps": step, "planned_steps": n_steps, "train_s": seconds, "step_s": seconds / max(step, 1),
            "final_loss": losses[-1] if losses else float("nan"),
            "loss_last10": float(np.mean(losses[-10:])) if losses else float("nan"),
            "logit_scale": float(model.logit_scale.detach().exp()),
            "model_params": sum(p.numel() for p in model.parameters()),
            "trained_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "head_params": sum(p.numel() for p in model.head.parameters())}


def train_head(head: str, K: int, train: Split, recipe: Recipe, tower: str | os.PathLike | None = None,
               on_step: Callable[[int, dict[str, float]], None] | None = None):
    """Stage 3: train one head (on ``train``'s cached features when it has them, with the frozen ``tower``); returns
    ``(model, info)``. ``on_step(step, logs)`` sees the float logs of every step (``glccl.engine.train_step``'s)."""
    model = build_model(head, K, recipe, tower)
    return model, fit(model, train, recipe, f"{head}, K={K}", on_step)


# -- stage 1: the shared frame tower ----------------------------------------------------------------------------------


def tower_settings(recipe: Recipe, spec: dict, *, num_train: int, num_test: int, data_seed: int, size: int) -> dict:
    """Everything the stage-1 tower depends on (its cache key)."""
    r = recipe.tower_recipe()
    return {"preset": r.preset, "head": "meanp", "K": spec["K"], "events": list(spec["events"]),
            "seconds": spec["seconds"], "fps": spec["fps"], "num_train": num_train, "num_test": num_test,
            "data_seed": data_seed, "size": size, "steps": r.steps, "batch_size": r.batch_size,
            "captions_per_video": r.captions_per_video, "lr": r.lr, "coef_lr": r.coef_lr,
            "weight_decay": r.weight_decay, "warmup_fraction": r.warmup_fraction, "grad_clip": r.grad_clip,
            "eta": r.eta, "logit_scale": r.logit_scale, "logit_scale_max": r.logit_scale_max,
            "max_words": r.max_words, "seed": r.seed}


def tower_path(data_root: str | os.PathLike, settings: dict) -> Path:
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return Path(data_root) / "towers" / f"tower-{key}.pt"


def ensure_tower(data_root: str | os.PathLike, settings: dict, load_train: Callable[[], Split], recipe: Recipe,
                 on_step: Callable[[int, dict[str, float]], None] | None = None) -> tuple[Path, dict]:
    """Stage 1: the shared frame tower's state dict file, trained (meanp head, end to end, ``recipe.tower_recipe()``)
    unless a file with the same ``settings`` exists. Returns ``(path, info)``; ``info["cached"]`` says which."""
    path = tower_path(data_root, settings)
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        saved = json.loads(meta.read_text())
        if saved.get("settings") == settings:
            log(f"tower: reusing {path} (trained {saved['info']['steps']} steps in {saved['info']['train_s']:.0f} s)")
            return path, {**saved["info"], "cached": True, "path": str(path)}
    r = recipe.tower_recipe()
    train = load_train()
    log(f"tower: training {r.preset} + meanp end to end on K={settings['K']}, {r.steps} steps of batch "
        f"{r.batch_size} -> {path}")
    model = build_model("meanp", settings["K"], r)
    info = fit(model, train, r, f"tower (meanp, K={settings['K']})", on_step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    meta.write_text(json.dumps({"settings": settings, "info": info}, indent=1))
    log(f"tower: {info['steps']} steps in {info['train_s']:.0f} s ({info['step_s']:.2f} s/step), loss "
        f"{info['loss_last10']:.3f}")
    return path, {**info, "cached": False, "path": str(path)}


# -- stage 2: frame features ------------------------------------------------------------------------------------------


@torch.no_grad()
def cache_features(encoder, split: Split, batch_size: int = 16) -> Split:
    """Replace ``split``'s pixels by the frozen tower's per-frame features ``[V, K, D]`` (``split.feats``; eval mode,
    ``batch_size`` videos at a time); returns ``split``."""
    from glccl import engine

    encoder.eval()
    feats = [encoder.encode_frames(engine.channels_first(split.frames[i:i + batch_size]),
                                   split.frame_mask[i:i + batch_size]).float()
             for i in range(0, split.num_videos, batch_size)]
    split.feats = torch.cat(feats) if feats else torch.zeros(0, split.frames.shape[1], encoder.embed_dim)
    split.frames = split.frames[:0]  # free the pixels
    return split


@torch.no_grad()
def evaluate(model, test: Split, batch_size: int = 64) -> dict[str, float]:
    """Retrieval metrics of ``model`` on ``test`` (every caption against every video), from its cached frame features
    (``temporal_encode``) when it has them, else from its pixels."""
    from glccl import engine
    from glccl.metrics import retrieval_metrics
    from glccl.similarity import similarity_matrix

    core = engine.unwrap(model).eval()
    if test.feats is not None:
        video = {"frames": torch.cat([core.temporal_encode(test.feats[i:i + batch_size],
                                                           test.frame_mask[i:i + batch_size])
                                      for i in range(0, test.num_videos, batch_size)]).float(),
                 "frame_mask": test.frame_mask.bool()}
    else:
        batches = ({"frames": test.frames[i:i + batch_size], "frame_mask": test.frame_mask[i:i + batch_size],
                    "video_index": torch.arange(i, min(i + batch_size, test.num_videos))}
                   for i in range(0, test.num_videos, batch_size))
        video = engine.encode_videos(model, batches)
    text = engine.encode_texts(model, test.tokens, batch_size)
    sim = similarity_matrix(core.head, text, video)
    metrics = retrieval_metrics(sim, test.caption_video)
    metrics["num_texts"], metrics["num_videos"] = float(sim.shape[0]), float(sim.shape[1])
    return metrics


def run_accuracy(heads: Sequence[str], frames: Sequence[int], recipe: Recipe, *, data_root: str, specs: dict[int, dict],
                 num_train: int, num_test: int, data_seed: int = 0, decoder: str = "decord",
                 on_result: Callable[[dict], None] | None = None, on_step=None) -> tuple[list[dict], dict, dict]:
    """Stage 1 (shared tower), then per K stage 2 (features) and stage 3 (every head). Returns ``(rows, data_info,
    tower_info)``; a failing head gives a row with ``error`` instead of metrics. ``on_step(name, K, step, logs)`` sees
    every training step (``name`` "tower" for stage 1). ``specs`` must hold ``recipe.tower_frames`` too."""
    from glccl.model import create_model, preset_image_size

    size = preset_image_size(recipe.preset)
    t0 = time.perf_counter()
    tk = recipe.tower_frames
    settings = tower_settings(recipe, specs[tk], num_train=num_train, num_test=num_test, data_seed=data_seed,
                              size=size)

    def load_tower_train() -> Split:
        root = ensure_data(data_root, specs[tk], num_train=num_train, num_test=num_test, size=size, seed=data_seed)
        return load_split(root, "train", tk, size, recipe.max_words, decoder)

    tower_cb = (lambda s, lg: on_step("tower", tk, s, lg)) if on_step else None
    tower, tower_info = ensure_tower(data_root, settings, load_tower_train, recipe, tower_cb)
    tower_info = {**tower_info, "settings": settings, "stage_s": time.perf_counter() - t0}
    encoder = create_model(recipe.preset, pretrained=str(tower), head="meanp", num_frames=tk,
                           max_words=recipe.max_words)
    rows, data_info = [], {}
    for K in frames:
        spec = specs[K]
        root = ensure_data(data_root, spec, num_train=num_train, num_test=num_test, size=size, seed=data_seed)
        data = load_data(root, K, size, recipe.max_words, decoder)
        t1 = time.perf_counter()
        for split in data.values():
            cache_features(encoder, split)
        feats_s = time.perf_counter() - t1
        log(f"K={K}: frame features of {sum(s.num_videos for s in data.values())} videos in {feats_s:.1f} s")
        meta = json.loads((root / "synth_meta.json").read_text())
        data_info[K] = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}, "root": str(root),
                        "train_videos": data["train"].num_videos, "train_captions": int(data["train"].tokens.shape[0]),
                        "test_videos": data["test"].num_videos, "test_captions": int(data["test"].tokens.shape[0]),
                        "test_single_event_share": meta["single_event_caption_share"]["test"],
                        "features_s": feats_s}
        for head in heads:
            row = {"head": head, "K": K}
            try:
                cb = (lambda s, lg, h=head, k=K: on_step(h, k, s, lg)) if on_step else None
                model, info = train_head(head, K, data["train"], recipe, tower, on_step=cb)
                t2 = time.perf_counter()
                row["test"] = evaluate(model, data["test"], recipe.eval_batch_size)
                row["train"] = {**info, "eval_s": time.perf_counter() - t2}
                log(f"K={K} {head}: {info['steps']} steps in {info['train_s']:.0f} s ({info['step_s']:.2f} s/step), "
                    f"loss {info['loss_last10']:.3f}, test t2v R@1 {row['test']['t2v/R@1']:.1f} "
                    f"v2t R@1 {row['test']['v2t/R@1']:.1f}")
            except Exception as e:  # one head failing must not lose the others' results
                row["error"] = f"{type(e).__name__}: {e}"
                log(f"K={K} {head}: FAILED\n{traceback.format_exc()}")
            rows.append(row)
            if on_result is not None:
                on_result(row)
        del data
    return rows, data_info, tower_info


# ---------------------------------------------------------------------------------------------------------------------
# cost of the similarity stage (benchmarks/similarity.py's measurement, at any K)


def cost_shape(K: int, Nw: int, D: int) -> str:
    """Register ``{K, Nw, D}`` in ``benchmarks/similarity.py``'s shape table (its ``measure`` takes a shape name)."""
    name = f"heads-K{K}-Nw{Nw}-D{D}"
    simbench.SHAPES.setdefault(name, {"K": K, "Nw": Nw, "D": D})
    return name


def measure_cost_inprocess(head: str, K: int, *, n: int, Nw: int, D: int, reps: int, max_run_s: float,
                           rate_s: float, threads: int | None) -> dict:
    from glccl.heads import build_head

    r = simbench.measure(head, cost_shape(K, Nw, D), n, device="cpu", dtype="fp32", reps=reps, max_run_s=max_run_s,
                         threads=threads, rate_s=rate_s, full_memory=True)
    params = sum(p.numel() for p in build_head(head, num_words=Nw, num_frames=K, dim=D).parameters())
    return {**r, "head": head, "K": K, "Nw": Nw, "D": D, "head_params": params}


def measure_cost(head: str, K: int, *, n: int, Nw: int, D: int, reps: int = 2, max_run_s: float = 3.0,
                 rate_s: float = 0.3, threads: int | None = None, inprocess: bool = False) -> dict:
    """Similarity-stage wall/CPU time, analytic FLOPs, peak memory above the inputs and parameter count of one head
    at one K for ``n`` texts x ``n`` videos (a fresh subprocess unless ``inprocess``: clean peak memory)."""
    job = dict(head=head, K=K, n=n, Nw=Nw, D=D, reps=reps, max_run_s=max_run_s, rate_s=rate_s, threads=threads)
    if inprocess:
        return measure_cost_inprocess(**job)
    cmd = [sys.executable, os.path.abspath(__file__), "--_cost-worker", json.dumps(job)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"cost worker {job} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_cost(heads: Sequence[str], frames: Sequence[int], *, on_result: Callable[[dict], None] | None = None,
             **kw) -> list[dict]:
    rows = []
    for K in frames:
        for head in heads:
            try:
                r = measure_cost(head, K, **kw)
                log(f"cost K={K} {head}: {r['wall_s']:.3f} s ({r['timed']}/{r['n']} timed), "
                    f"{r['flops'] / 1e9:.1f} GFLOP, peak {r['peak_bytes'] / 2**20:.0f} MB")
            except Exception as e:
                r = {"head": head, "K": K, "error": f"{type(e).__name__}: {e}"}
                log(f"cost K={K} {head}: FAILED\n{e}")
            rows.append(r)
            if on_result is not None:
                on_result(r)
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# report: table, conclusions, plot, BENCHMARKS.md section, MLflow


def _index(rows: list[dict]) -> dict[tuple[str, int], dict]:
    return {(r["head"], r["K"]): r for r in rows}


def _f(x: float | None, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _gflop(flops: float) -> str:
    g = flops / 1e9
    return f"{g:,.0f}" if g >= 100 else f"{g:.3g}"


def results_table(heads: Sequence[str], frames: Sequence[int], acc: list[dict], cost: list[dict]) -> str:
    """One row per (K, head): test metrics, training time, similarity-stage time / GFLOP / peak MB, head parameters."""
    a, c = _index(acc), _index(cost)
    n = next((r["n"] for r in cost if "n" in r), None)
    lines = ["| K | head | t2v R@1 | t2v R@5 | t2v MnR | v2t R@1 | v2t R@5 | v2t MnR | train s (steps) | "
             f"sim s ({n}²) | GFLOP | peak MB | head params |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for K in frames:
        for h in heads:
            ar, cr = a.get((h, K), {}), c.get((h, K), {})
            t, tr = ar.get("test", {}), ar.get("train", {})
            if "error" in ar:
                accs = ["failed"] + ["–"] * 6
            elif t:
                accs = [_f(t.get(m), ".1f") for m in METRICS] + [f"{tr['train_s']:.0f} ({tr['steps']})"]
            else:
                accs = ["–"] * 7
            if "wall_s" in cr:
                costs = [f"{cr['wall_s']:.3g}" + ("*" if cr.get("extrapolated") else ""), _gflop(cr["flops"]),
                         f"{cr['peak_bytes'] / 2**20:,.0f}", f"{cr['head_params'] / 1e6:.2f} M"]
            else:
                costs = ["failed" if "error" in cr else "–"] + ["–"] * 3
            lines.append(f"| {K} | {h} | " + " | ".join(accs + costs) + " |")
    return "\n".join(lines)


def pivot_table(heads: Sequence[str], frames: Sequence[int], acc: list[dict], metric: str = "t2v/R@1") -> str:
    a = _index(acc)
    lines = [f"| {metric} | " + " | ".join(f"K = {K}" for K in frames) + " |", "|---|" + "---|" * len(frames)]
    for h in heads:
        cells = [_f(a.get((h, K), {}).get("test", {}).get(metric), ".1f") for K in frames]
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _se(p: float, n: float) -> float:
    """Binomial standard error of a recall (percent) measured on ``n`` captions."""
    q = p / 100.0
    return 100.0 * math.sqrt(max(q * (1 - q), 0.0) / max(n, 1.0))


def conclusions(heads: Sequence[str], frames: Sequence[int], acc: list[dict], cost: list[dict]) -> list[str]:
    """Statements computed from the numbers: best head per K (and which are within 2 SE of it), GLCCL vs MeanP in
    accuracy and cost, how accuracy and cost change from the shortest to the longest videos."""
    a, c = _index(acc), _index(cost)
    ok = {k: r for k, r in a.items() if "test" in r}
    out = []
    for K in frames:
        rs = sorted(((r["test"]["t2v/R@1"], h) for (h, k), r in ok.items() if k == K), reverse=True)
        if not rs:
            continue
        best, bh = rs[0]
        n = ok[(bh, K)]["test"]["num_texts"]
        se = _se(best, n)
        close = [h for v, h in rs[1:] if best - v <= 2 * se]
        s = (f"K = {K}: best t2v R@1 {bh} {best:.1f} (± {se:.1f} SE on {n:.0f} captions; chance "
             f"{100 / ok[(bh, K)]['test']['num_videos']:.0f})")
        if len(rs) > 1:
            s += f", next {rs[1][1]} {rs[1][0]:.1f}"
        s += (f"; within 2 SE of the best: {', '.join(close)}." if close else "; every other head is more than 2 SE "
              "below it.")
        out.append(s)
    if "glccl" in heads and "meanp" in heads:
        parts = []
        for K in frames:
            g, m = ok.get(("glccl", K)), ok.get(("meanp", K))
            if not (g and m):
                continue
            d1 = g["test"]["t2v/R@1"] - m["test"]["t2v/R@1"]
            dv = g["test"]["v2t/R@1"] - m["test"]["v2t/R@1"]
            se = math.hypot(_se(g["test"]["t2v/R@1"], g["test"]["num_texts"]),
                            _se(m["test"]["t2v/R@1"], m["test"]["num_texts"]))
            s = f"K = {K}: t2v R@1 {d1:+.1f} (SE of the difference {se:.1f}), v2t R@1 {dv:+.1f}"
            gc, mc = c.get(("glccl", K), {}), c.get(("meanp", K), {})
            if "wall_s" in gc and "wall_s" in mc:
                s += (f", similarity stage {gc['wall_s'] / max(mc['wall_s'], 1e-9):,.0f}x the time and "
                      f"{gc['flops'] / max(mc['flops'], 1):,.0f}x the FLOPs")
            parts.append(s)
        if parts:
            out.append("GLCCL vs MeanP: " + "; ".join(parts) + ".")
    if len(frames) > 1:
        k0, k1 = frames[0], frames[-1]
        trend = [f"{h} {ok[(h, k1)]['test']['t2v/R@1'] - ok[(h, k0)]['test']['t2v/R@1']:+.1f}" for h in heads
                 if (h, k0) in ok and (h, k1) in ok]
        if trend:
            out.append(f"t2v R@1 from K = {k0} to K = {k1} (longer videos, more events, more partial relevance): "
                       + ", ".join(trend) + ".")
        growth = [f"{h} {c[(h, k1)]['wall_s'] / max(c[(h, k0)]['wall_s'], 1e-9):.1f}x" for h in heads
                  if "wall_s" in c.get((h, k0), {}) and "wall_s" in c.get((h, k1), {})]
        if growth:
            out.append(f"Similarity-stage time from K = {k0} to K = {k1}: " + ", ".join(growth) + ".")
    kmax = frames[-1] if frames else None
    timed = sorted((r["wall_s"], h, r["n"]) for (h, k), r in c.items() if k == kmax and "wall_s" in r)
    if len(timed) > 1:
        out.append(f"At K = {kmax} the similarity stage for {timed[0][2]}² pairs ranges from {timed[0][1]} "
                   f"({timed[0][0]:.3g} s) to {timed[-1][1]} ({timed[-1][0]:.3g} s).")
    failed = [f"{r['head']} K={r['K']}" for r in acc + cost if "error" in r]
    if failed:
        out.append("Failed: " + ", ".join(failed) + " (see the JSON for the errors).")
    return out


def plot(heads: Sequence[str], frames: Sequence[int], acc: list[dict], cost: list[dict], path: str | os.PathLike,
         title: str = "") -> Path:
    """PNG, 2 x 3 panels: t2v R@1 vs similarity time, vs GFLOP, vs K; time, GFLOP and peak memory vs K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, c = _index(acc), _index(cost)
    colours = {h: plt.get_cmap("tab10")(i % 10) for i, h in enumerate(heads)}
    markers = dict(zip(frames, "osD^vP*X"))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    (ax_t, ax_f, ax_k), (ax_ct, ax_cf, ax_cm) = axes

    def r1(h, K):
        return a.get((h, K), {}).get("test", {}).get("t2v/R@1")

    for h in heads:
        col = colours[h]
        for ax, key, scale in ((ax_t, "wall_s", 1.0), (ax_f, "flops", 1e-9)):
            pts = [(c[(h, K)][key] * scale, r1(h, K), K) for K in frames
                   if key in c.get((h, K), {}) and r1(h, K) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=col, alpha=0.4, lw=1)
                for x, y, K in pts:
                    ax.scatter(x, y, color=col, marker=markers[K], s=40)
                ax.annotate(h, (pts[-1][0], pts[-1][1]), fontsize=8, color=col, xytext=(3, 3),
                            textcoords="offset points")
        ks = [K for K in frames if r1(h, K) is not None]
        if ks:
            ax_k.plot(ks, [r1(h, K) for K in ks], marker="o", color=col, label=h)
        for ax, key, scale in ((ax_ct, "wall_s", 1.0), (ax_cf, "flops", 1e-9), (ax_cm, "peak_bytes", 2**-20)):
            ks = [K for K in frames if key in c.get((h, K), {})]
            if ks:
                floor = 1e-3 if key == "peak_bytes" else 0.0  # a head may allocate nothing measurable (log axis)
                ax.plot(ks, [max(c[(h, K)][key] * scale, floor) for K in ks], marker="o", color=col, label=h)
    n = next((r["n"] for r in cost if "n" in r), "N")
    for ax in (ax_t, ax_f):
        ax.set_xscale("log")
        ax.set_ylabel("test t2v R@1 (%)")
    ax_t.set_xlabel(f"similarity stage, {n}² pairs (s)")
    ax_f.set_xlabel(f"similarity stage, {n}² pairs (GFLOP)")
    ax_k.set_ylabel("test t2v R@1 (%)")
    ax_ct.set_ylabel(f"similarity stage time, {n}² pairs (s)")
    ax_cf.set_ylabel(f"GFLOP, {n}² pairs")
    ax_cm.set_ylabel("peak memory above inputs (MB)")
    for ax in (ax_ct, ax_cf, ax_cm):
        ax.set_yscale("log")
    for ax in (ax_k, ax_ct, ax_cf, ax_cm):
        ax.set_xlabel("K (frames per video)")
        ax.set_xticks(list(frames))
    for ax in axes.flat:
        ax.grid(True, alpha=0.3, which="both")
    for ax in (ax_k, ax_ct):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if len(frames) > 1:
        from matplotlib.lines import Line2D

        ax_t.legend(handles=[Line2D([], [], color="grey", marker=markers[K], ls="", label=f"K = {K}") for K in frames],
                    fontsize=8, loc="best")
    fig.suptitle(title or "similarity heads: accuracy vs cost, cost vs K", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def replace_section(text: str, section: str, heading: str = SECTION) -> str:
    """``text`` with the level-2 section ``heading`` (up to the next ``## `` heading) replaced by ``section``, or with
    ``section`` appended when there is none."""
    section = section.strip("\n") + "\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == heading), None)
    if start is None:
        return (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def section_text(report: dict, table: str, pivot: str, concl: list[str], png_rel: str | None) -> str:
    a, r = report["args"], report["recipe"]
    data = report.get("data", {})
    specs = "; ".join(f"K = {K}: {d['events'][0]}-{d['events'][1]} events, {d['seconds']:g} s "
                      f"({d['frames_per_video']} frames), {d['train_captions']} train captions, "
                      f"{d['test_single_event_share'] * 100:.0f} % one-event test captions"
                      for K, d in data.items() if d.get("test_single_event_share") is not None)
    out = [SECTION, "",
           f"Measured {report['date']} on {report['machine']}; load average {report['loadavg'][0]:.1f} at the start, "
           f"{report['loadavg'][1]:.1f} at the end; {report['elapsed_s'] / 60:.1f} min in all.", "",
           "```", report["command"], "```", ""]
    if not a["skip_accuracy"]:
        steps = (f"{r['steps']} steps" if r["steps"] else f"{r['epochs']} epochs of {r['captions_per_video']} "
                 f"caption(s) per video")
        scale = f"initial logit scale {r['logit_scale']:g}" if r["logit_scale"] else "the preset's logit scale"
        tw = report.get("tower") or {}
        ts = tw.get("settings", {})
        tower_how = (f"reused from {tw['path']} (trained earlier in {tw['train_s'] / 60:.1f} min)" if tw.get("cached")
                     else f"trained in this run in {tw.get('train_s', 0) / 60:.1f} min")
        out += [f"**Accuracy: one shared, frozen frame tower** (end-to-end training of every head does not fit a CPU "
                "budget: the frame tower dominates each step, and from scratch it needs a few hundred steps to leave "
                "chance). (1) *Tower*: preset "
                f"`{r['preset']}` with the **meanp** head (the baseline, so that the shared tower is not biased "
                f"toward GLCCL or any other head under test), trained end to end on the K = {r['tower_frames']} set "
                f"with `glccl.engine.train_step`: {r['tower_steps']} steps of batch {r['tower_batch_size']}, "
                f"{tower_how}; final loss {_f(tw.get('loss_last10'), '.3f')} (mean of the last 10 steps). "
                "(2) *Frame features*: with that tower frozen, every video's K frames are encoded once per K "
                "(`model.encode_frames`; the frame tower works per frame) and cached in memory. (3) *Heads*: per "
                "head and K, the tower's CLIP is loaded into the model (the temporal encoder initialised from its "
                "text transformer), the frame tower is frozen, and text tower + temporal encoder + head + logit "
                f"scale are trained from the cached features ({steps}, batch {r['batch_size']}), same seed and same "
                "batches for every head, then scored on the test split from the cached features. "
                f"Both stages: lr {r['lr']:g} (CLIP x {r['coef_lr']:g}), weight decay {r['weight_decay']:g}, "
                f"{r['warmup_fraction'] * 100:g} % warm-up + cosine, η {r['eta']:g}, {scale}, Nw = {r['max_words']}, "
                f"{a['threads'] or torch.get_num_threads()} torch threads"
                + (f", at most {r['max_train_s']:g} s per head run" if r["max_train_s"] else "") + ". "
                "So the table compares how well each head (with its temporal encoder and text tower) uses the same "
                "frame features, not how well it would shape the frame tower end to end. "
                f"Synthetic sets of {a['num_train']} train and {a['num_test']} test videos (one caption each, matching "
                f"only its own video) per K, K frames at the segment centres: {specs}."
                + (f" Tower data: K = {ts['K']}, {ts['events'][0]}-{ts['events'][1]} events, {ts['seconds']:g} s."
                   if ts and ts.get("K") not in data else ""), ""]
    if not a["skip_cost"]:
        out += [f"**Cost**: similarity stage for {a['cost_n']} texts x {a['cost_n']} videos of random features at "
                f"D = {a['cost_dim']}, Nw = {a['cost_words']} (all valid), fp32 CPU, through "
                "`glccl.similarity.similarity_matrix`: median of "
                f"{a['cost_reps']} runs (`*`: timed on a sub-problem and extrapolated, as in benchmarks/similarity.py); "
                "GFLOP from the heads' `*_flops`; peak memory above the inputs at the full size, in a fresh process; "
                f"head parameters at D = {a['cost_dim']}.", ""]
    out += [table, "", pivot, ""]
    if png_rel:
        out += [f"![accuracy vs cost, cost vs K]({png_rel})", ""]
    out += ["**Conclusion (measured):**", ""] + [f"- {s}" for s in concl] + [""]
    return "\n".join(out)


def log_mlflow(report: dict, files: Sequence[Path], uri: str, experiment: str, run_name: str,
               step_logs: list[tuple[str, int, dict]]) -> str:
    """One MLflow run: the arguments and recipe as params, every result as a metric, training curves as stepped
    metrics, the table, plot and JSON as artifacts. Returns the run id."""
    from pipelines import tracking

    params = {**{f"arg.{k}": v for k, v in report["args"].items()},
              **{f"recipe.{k}": v for k, v in report["recipe"].items()}}
    tracking.close_unfinished(uri, experiment, run_name)
    run_id, _ = tracking.start_or_resume_run(uri, experiment, run_name, params, tags={"glccl.benchmark": "compare_heads"})
    status = "FAILED"
    try:
        lg = tracking.RunLogger(uri, run_id)
        metrics: dict[str, float] = {}
        tw = report.get("tower") or {}
        for k in ("steps", "train_s", "step_s", "loss_last10", "stage_s"):
            if k in tw:
                metrics[f"tower/K{tw['settings']['K']}/train/{k}"] = tw[k]
        for r in report["accuracy"]:
            p = f"{r['head']}/K{r['K']}"
            for k, v in r.get("test", {}).items():
                metrics[f"{p}/test/{k}"] = v
            for k in ("steps", "train_s", "step_s", "loss_last10", "eval_s", "head_params"):
                if k in r.get("train", {}):
                    metrics[f"{p}/train/{k}"] = r["train"][k]
        for r in report["cost"]:
            if "wall_s" in r:
                p = f"{r['head']}/K{r['K']}/cost"
                metrics.update({f"{p}/sim_s": r["wall_s"], f"{p}/cpu_s": r["cpu_s"], f"{p}/gflop": r["flops"] / 1e9,
                                f"{p}/peak_mb": r["peak_bytes"] / 2**20, f"{p}/head_params": r["head_params"]})
        metrics = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        lg.metrics(metrics, step=0)
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        curves = [Metric(tracking.metric_key(f"{prefix}/train/{k}"), float(v), ts, int(step))
                  for prefix, step, logs in step_logs for k, v in logs.items()
                  if not k.startswith("lr/") and math.isfinite(float(v))]
        for i in range(0, len(curves), 1000):
            lg.client.log_batch(run_id, metrics=curves[i:i + 1000])
        for f in files:
            lg.artifact(f)
        status = "FINISHED"
    finally:
        tracking.end_run(uri, run_id, status)
    return run_id


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _per_k(text: str | None, conv) -> dict[int, object]:
    """``"K:value,K:value"`` (or a single value for every K) -> {K: value}; ``{None: value}`` for the single form."""
    if not text:
        return {}
    if ":" not in text:
        return {None: conv(text)}
    out = {}
    for item in text.split(","):
        k, _, v = item.partition(":")
        out[int(k)] = conv(v)
    return out


def _events(text: str) -> tuple[int, int]:
    lo, _, hi = text.strip().partition("-")
    return int(lo), int(hi or lo)


def build_parser() -> argparse.ArgumentParser:
    d = Recipe()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what")
    g.add_argument("--heads", default="all", help="comma-separated heads (default: every registered head)")
    g.add_argument("--frames", default=",".join(map(str, DEFAULT_FRAMES)), help="K values (default %(default)s)")
    g.add_argument("--skip-accuracy", action="store_true", help="cost part only")
    g.add_argument("--skip-cost", action="store_true", help="accuracy part only")
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default="data/bench-heads", help="one synthetic set per K in ROOT/K{K}")
    g.add_argument("--num-train", type=int, default=300, help="training videos per K (default %(default)s)")
    g.add_argument("--num-test", type=int, default=100, help="test videos per K (default %(default)s)")
    g.add_argument("--data-seed", type=int, default=0)
    g.add_argument("--fps", type=int, default=10)
    g.add_argument("--events", default=None, help="events per video: MIN-MAX for every K, or K:MIN-MAX,... "
                   "(default: 2-4 / 4-6 / 7-11 for K = 12 / 32 / 64, see video_spec)")
    g.add_argument("--seconds", default=None, help="video length: S for every K, or K:S,... (default: see video_spec)")
    g.add_argument("--decoder", default="decord", choices=("decord", "pyav"))
    g = p.add_argument_group("stage 1: the shared frame tower (meanp head, end to end, cached under --data-root)")
    g.add_argument("--preset", default=d.preset, help="encoder preset (default %(default)s)")
    g.add_argument("--tower-frames", type=int, default=d.tower_frames,
                   help="K of the synthetic set the tower is trained on (default %(default)s)")
    g.add_argument("--tower-steps", type=int, default=d.tower_steps, help="default %(default)s")
    g.add_argument("--tower-batch-size", type=int, default=d.tower_batch_size, help="default %(default)s")
    g = p.add_argument_group("stage 3: every head alike, on the frozen tower's frame features (lr, weight decay, "
                             "warm-up, η, logit scale: stage 1 too)")
    g.add_argument("--steps", type=int, default=d.steps,
                   help="optimiser steps per head and K (default %(default)s; 0: --epochs)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="passes over the videos when --steps is 0")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    g.add_argument("--captions-per-video", type=int, default=d.captions_per_video,
                   help="captions of each video per epoch (default %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--coef-lr", type=float, default=d.coef_lr, help="CLIP parameters train at lr x this")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--warmup-fraction", type=float, default=d.warmup_fraction)
    g.add_argument("--eta", type=float, default=d.eta, help="CSC loss weight (heads with several parts)")
    g.add_argument("--logit-scale", type=float, default=d.logit_scale,
                   help="initial similarity scale λ (not its log; default %(default)s; 0: the preset's)")
    g.add_argument("--max-words", type=int, default=d.max_words)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--max-train-s", type=float, default=d.max_train_s,
                   help="stop each training run after this many seconds (0: no limit)")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    g = p.add_argument_group("cost")
    g.add_argument("--cost-n", type=int, default=128, help="texts = videos for the similarity stage")
    g.add_argument("--cost-dim", type=int, default=512, help="feature width D (512: CLIP ViT-B/32)")
    g.add_argument("--cost-words", type=int, default=32, help="Nw")
    g.add_argument("--cost-reps", type=int, default=2)
    g.add_argument("--cost-max-run-s", type=float, default=3.0,
                   help="longest timed run before timing a sub-problem and extrapolating")
    g.add_argument("--cost-rate-s", type=float, default=0.3, help="seconds of GEMM-rate measurement per point")
    g.add_argument("--inprocess", action="store_true", help="cost measurements in this process (less clean memory)")
    g = p.add_argument_group("output")
    g.add_argument("--out-dir", default="benchmarks/results", help="compare_heads.{json,md,png} go here")
    g.add_argument("--bench-md", default="BENCHMARKS.md", help="file whose section is replaced ('' : none)")
    g.add_argument("--no-mlflow", action="store_true")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite under --storage)")
    g.add_argument("--storage", default="runs", help="for the default MLflow store: STORAGE/mlflow.db")
    g.add_argument("--experiment", default="glccl-bench")
    g.add_argument("--run-name", default="compare-heads")
    p.add_argument("--_cost-worker", dest="cost_worker", default=None, help=argparse.SUPPRESS)
    return p


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    fields = {f.name for f in dataclasses.fields(Recipe)}
    r = Recipe(**{k: v for k, v in vars(args).items() if k in fields})
    return dataclasses.replace(r, logit_scale=r.logit_scale or None)


def specs_from_args(args: argparse.Namespace, frames: Sequence[int]) -> dict[int, dict]:
    events, seconds = _per_k(args.events, _events), _per_k(args.seconds, float)
    return {K: video_spec(K, args.fps, events.get(K, events.get(None)), seconds.get(K, seconds.get(None)))
            for K in frames}


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.cost_worker:
        print(json.dumps(measure_cost_inprocess(**json.loads(args.cost_worker)), default=float))
        return 0
    from glccl.heads import list_heads

    heads = list_heads() if args.heads == "all" else [h.strip() for h in args.heads.split(",") if h.strip()]
    unknown = [h for h in heads if h not in list_heads()]
    if unknown:
        p.error(f"unknown head(s) {unknown}; known: {list_heads()}")
    frames = _ints(args.frames)
    if not frames or min(frames) < 1:
        p.error("--frames needs positive K values")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = recipe_from_args(args)
    specs = specs_from_args(args, sorted({*frames, recipe.tower_frames}))
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    cmd = " ".join([".venv/bin/python benchmarks/compare_heads.py"] + list(sys.argv[1:] if argv is None else argv))
    report = {"date": _dt.date.today().isoformat(), "machine": simbench.machine("cpu"), "command": cmd,
              "args": {k: v for k, v in vars(args).items() if k != "cost_worker"},
              "recipe": dataclasses.asdict(recipe), "heads": heads, "frames": frames,
              "specs": {K: {**s, "events": list(s["events"])} for K, s in specs.items()}, "tower": {}, "accuracy": [],
              "cost": []}
    step_logs: list[tuple[str, int, dict]] = []
    log(f"{len(heads)} heads x K = {frames}; machine: {report['machine']}; load average {load0:.1f}")

    if not args.skip_accuracy:
        def on_step(head, K, step, logs):
            step_logs.append((f"{head}/K{K}", step, logs))

        acc, data_info, tower_info = run_accuracy(heads, frames, recipe, data_root=args.data_root, specs=specs,
                                      num_train=args.num_train, num_test=args.num_test, data_seed=args.data_seed,
                                      decoder=args.decoder, on_step=on_step if not args.no_mlflow else None)
        report["accuracy"], report["data"], report["tower"] = acc, data_info, tower_info
        log(f"accuracy part done in {(time.perf_counter() - t_start) / 60:.1f} min")
    if not args.skip_cost:
        t0 = time.perf_counter()
        report["cost"] = run_cost(heads, frames, n=args.cost_n, Nw=args.cost_words, D=args.cost_dim,
                                  reps=args.cost_reps, max_run_s=args.cost_max_run_s, rate_s=args.cost_rate_s,
                                  threads=args.threads, inprocess=args.inprocess)
        log(f"cost part done in {(time.perf_counter() - t0) / 60:.1f} min")

    report["elapsed_s"] = time.perf_counter() - t_start
    report["loadavg"] = [load0, os.getloadavg()[0]]
    table = results_table(heads, frames, report["accuracy"], report["cost"])
    pivot = pivot_table(heads, frames, report["accuracy"]) if report["accuracy"] else ""
    concl = conclusions(heads, frames, report["accuracy"], report["cost"])
    report["conclusions"] = concl
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot(heads, frames, report["accuracy"], report["cost"], out_dir / "compare_heads.png",
               title=f"similarity heads on {report['machine'].split(',')[0]} ({report['date']})")
    bench_md = Path(args.bench_md) if args.bench_md else None
    png_rel = os.path.relpath(png.resolve(), (bench_md or out_dir / "x").resolve().parent)
    section = section_text(report, table, pivot, concl, png_rel)
    md = out_dir / "compare_heads.md"
    md.write_text(section_text(report, table, pivot, concl, png.name))
    js = out_dir / "compare_heads.json"
    js.write_text(json.dumps(report, indent=1, default=float))
    print("\n" + section)
    if bench_md is not None:
        old = bench_md.read_text() if bench_md.is_file() else ""
        bench_md.write_text(replace_section(old, section))
        log(f"wrote the section of {bench_md}")
    if not args.no_mlflow:
        from pipelines import tracking

        uri = args.tracking_uri or tracking.default_tracking_uri(args.storage)
        run_id = log_mlflow(report, [js, md, png], uri, args.experiment, args.run_name, step_logs)
        report["mlflow"] = {"tracking_uri": uri, "run_id": run_id, "experiment": args.experiment}
        js.write_text(json.dumps(report, indent=1, default=float))
        log(f"MLflow run {run_id} in {uri}")
    failed = any("error" in r for r in report["accuracy"] + report["cost"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
