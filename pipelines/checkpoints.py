"""What a run writes to disk and reads back: Ray Train checkpoints (resume) and the model checkpoint
(``best_model.pt``: the best-on-validation weights with their config, what ``glccl eval`` and ``glccl search`` load).

Everything is tensors and plain values, read with ``weights_only=True`` (``glccl.safe_load``): a file that carries
pickled code is refused, and its code never runs.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glccl.config import RunConfig, load_config, to_dict, upgrade
from glccl.model import create_model_from_config
from glccl.safe_load import load_tensors

TRAIN_STATE = "state.pt"
BEST_WEIGHTS = "best_model.pt"


def rng_state() -> dict[str, Any]:
    """The RNG states as tensors and plain values only (a checkpoint loads with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"bit_generator": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])


def save_train_state(directory: Path, core, optimizer, scheduler, counters: dict[str, Any], best_state) -> None:
    """A Ray Train checkpoint's files: the full training state and the best weights so far."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(), **counters}, directory / TRAIN_STATE)
    torch.save(best_state if best_state is not None else core.state_dict(), directory / BEST_WEIGHTS)


def load_train_state(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(training state, best weights) of a Ray Train checkpoint directory."""
    return (load_tensors(Path(directory) / TRAIN_STATE, "training checkpoint"),
            load_tensors(Path(directory) / BEST_WEIGHTS, "training checkpoint"))


def load_best_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_tensors(Path(directory) / BEST_WEIGHTS, "training checkpoint")


def save_model_checkpoint(path: Path, weights: dict[str, torch.Tensor], cfg: RunConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # a reader never sees half a file
    torch.save({"model": weights, "config": to_dict(cfg)}, tmp)
    os.replace(tmp, path)


def load_model_checkpoint(path: str | Path, overrides: list[str] | None = None):
    """Return (model, cfg) from a ``best_model.pt``; a missing, wrong or unsafe file is a one-line error
    (FileNotFoundError, or ValueError: unreadable, not a checkpoint, or refused for carrying pickled code)."""
    path = Path(path)
    blob = load_tensors(path, "checkpoint")
    if not isinstance(blob, dict) or "model" not in blob or "config" not in blob:
        raise ValueError(f"checkpoint {path} is not a glccl model checkpoint (expected keys 'model' and 'config')")
    saved = load_config(upgrade(blob["config"]))  # written by this program, maybe before keys moved
    cfg = load_config(upgrade(blob["config"]), overrides)
    model = create_model_from_config(cfg.model)
    try:
        model.load_state_dict(blob["model"])
    except RuntimeError:  # PyTorch's message lists every mismatched key: name the setting instead
        changed = [f"model.{k} {getattr(saved.model, k)!r} -> {getattr(cfg.model, k)!r}" for k in MODEL_SHAPE_KEYS
                   if getattr(saved.model, k) != getattr(cfg.model, k)]
        what = (f"the overrides change {', '.join(changed)}: drop them" if changed
                else "its weights do not fit the model its own config describes")
        raise ValueError(f"checkpoint {path} holds a {saved.model.head} model on {saved.model.preset}; "
                         f"{what}") from None
    return model.eval(), cfg


# the model settings that decide the shapes of its weights
MODEL_SHAPE_KEYS = ("preset", "head", "head_args", "num_frames", "max_words", "temporal_layers")
