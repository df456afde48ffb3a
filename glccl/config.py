"""Typed run configuration: dataclasses loaded from YAML with ``key=value`` overrides.

One tree (``RunConfig``) holds every setting of a run; each section is a dataclass whose fields are the schema. YAML
maps onto it one to one, dotted overrides address the same keys (``model.head=meanp``, ``train.lr=3e-4``), and sweeps
search over the same dotted keys. An unknown key or a value of the wrong type or range raises ``ConfigError`` naming
the key.

    cfg = load_config("configs/demo.yaml", ["loss.eta=0.3", "model.num_frames=8"])
    cfg.to_dict()  # plain nested dict, e.g. for logging
    flatten(cfg.to_dict())  # {"loss.eta": 0.3, ...}
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


@dataclass
class ModelConfig:
    preset: str = "tiny"
    """Encoder preset: ``tiny`` (tests), ``tiny-rn`` / ``tiny-rn-32`` (conv towers at 64 / 32 px; the demo uses
    ``tiny-rn-32``), ``vit-b-32`` (OpenAI ViT-B/32, QuickGELU) or ``vit-b-16``."""
    pretrained: str | None = None
    """Local weight file (OpenAI TorchScript ``.pt``, plain state dict or open_clip checkpoint), or an explicit hub tag
    (``openai``, ``hf-hub:...``) which is the only thing that ever touches the network. None: random init."""
    head: str = "glccl"
    """Similarity head, see ``glccl heads``."""
    head_args: dict[str, Any] = field(default_factory=dict)
    """The head's hyperparameters by name (``glccl heads`` lists them with their defaults, the released code's values),
    e.g. ``{temperature: 3.0}`` for GLCCL's GLIM or ``{glim: mean}`` for GLIM without text guidance."""
    num_frames: int = 12
    """K: frames sampled per video."""
    max_words: int = 32
    """Nw: text tokens per caption (SOT + BPE + EOT, zero padded)."""
    temporal_layers: int = 4
    """Layers of the temporal transformer (seqTransf); 0 disables it."""
    grad_checkpointing: bool = False
    sim_chunk: int = 64
    """Videos per chunk in the similarity stage: bounds peak memory of scoring."""
    mask_padding: bool = True
    """Mask padded words and frames in the head. False: every head treats padding exactly as its release does (the
    README's table of released settings)."""
    logit_scale_init: float | None = None
    """Initial similarity scale λ (not its log); None keeps CLIP's (1/0.07 at random init, the weights' value when
    pretrained). A from-scratch model learns faster starting sharper (the demo uses 30)."""
    freeze_token_embedding: bool = False
    """Keep CLIP's token embedding (49,408 x width) fixed. It is most of a small model's parameters: frozen, it costs no
    gradient all-reduce and no optimiser update (the demo freezes its random one; BENCHMARKS.md, "Main job")."""

    def validate(self, prefix: str = "model") -> None:
        _check(self.num_frames >= 1, f"{prefix}.num_frames", f"must be >= 1, got {self.num_frames}")
        _check(self.max_words >= 3, f"{prefix}.max_words", f"must be >= 3 (SOT, a token, EOT), got {self.max_words}")
        _check(self.temporal_layers >= 0, f"{prefix}.temporal_layers", "must be >= 0")
        from glccl.heads import check_head_args, list_heads  # torch: only where a config is validated

        _check(self.head in list_heads(), f"{prefix}.head",
               f"unknown head {self.head!r} (known: {', '.join(list_heads())})")
        problem = check_head_args(self.head, self.head_args)
        _check(problem is None, f"{prefix}.head_args.{(problem or '').split(':')[0]}",
               (problem or "").partition(": ")[2])
        _check(self.sim_chunk >= 1, f"{prefix}.sim_chunk", "must be >= 1")
        _check(self.logit_scale_init is None or self.logit_scale_init > 0, f"{prefix}.logit_scale_init",
               f"must be > 0 (the scale itself, not its log), got {self.logit_scale_init}")


@dataclass
class LossConfig:
    csc: bool | None = None
    """GLCCL's CSC term. None: the head's own loss (CSC for GLCCL only; ``glccl heads`` shows each recipe). true adds
    CSC to another multi-part head (an ablation), false removes it from GLCCL."""
    eta: float = 0.5
    """Weight of the CSC loss: total = InfoNCE + eta * CSC (README value 0.5; code default 0.1)."""
    logit_scale_max: float = 100.0
    """Bound on exp(logit_scale), applied to the parameter after every optimiser step (as the release does)."""
    clamp_in_loss: bool = False
    """Also clamp exp(logit_scale) inside the loss: the logit scale then gets zero gradient at the bound."""

    def validate(self, prefix: str = "loss") -> None:
        _check(self.eta >= 0, f"{prefix}.eta", f"must be >= 0, got {self.eta}")
        _check(self.logit_scale_max > 0, f"{prefix}.logit_scale_max", "must be > 0")


@dataclass
class DataConfig:
    dataset: str = "synth"
    """Benchmark adapter: synth, msrvtt, msvd, didemo, vatex."""
    root: str = "data/synth"
    """Folder with the annotation files (and, unless ``video_dir`` is set, the videos)."""
    video_dir: str | None = None
    manifest: str | None = None
    """A prepared manifest parquet; built from ``root`` when None."""
    cache: str | None = None
    """A parquet frame cache written by ``glccl data prepare``; training reads it instead of decoding. Or a feature
    cache written by ``glccl data features``: training then reads per-frame CLIP features and keeps the frame tower
    that computed them (``model.pretrained``) frozen, training text tower + temporal encoder + head."""
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    decoder: str = "decord"
    """decord or pyav (decord falls back to pyav where it is not installed)."""
    max_skip_fraction: float = 0.01
    """Exit non-zero when more than this share of items is skipped as bad input."""
    strict: bool = False
    """Stop at the first bad item instead of skipping it."""
    decode_timeout_s: float = 60.0
    decode_cpus: float = 1.0
    """CPUs per decode task in Ray Data."""
    decode_batch_size: int = 8
    """Items per Ray Data map task (one block): videos decoded, or clips read from the frame cache."""
    cache_factor: int = 3
    """A frame cache holds cache_factor * K frames per video (segment sub-centres); training samples among them,
    evaluation reads the exact segment centres when the factor is odd. 1: cache exactly the K evaluation frames."""

    def validate(self, prefix: str = "data") -> None:
        _check(self.dataset in ("synth", "msrvtt", "msvd", "didemo", "vatex"), f"{prefix}.dataset",
               f"unknown dataset {self.dataset!r} (synth, msrvtt, msvd, didemo, vatex)")
        _check(self.decoder in ("decord", "pyav"), f"{prefix}.decoder", f"unknown decoder {self.decoder!r}")
        _check(0 <= self.max_skip_fraction <= 1, f"{prefix}.max_skip_fraction", "must be in [0, 1]")
        _check(self.decode_timeout_s > 0, f"{prefix}.decode_timeout_s", "must be > 0")
        _check(self.decode_cpus > 0, f"{prefix}.decode_cpus", "must be > 0")
        _check(isinstance(self.decode_batch_size, int) and self.decode_batch_size >= 1, f"{prefix}.decode_batch_size",
               "must be an integer >= 1")


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 128
    """Global batch (split across workers); the contrastive loss runs over the whole global batch."""
    eval_batch_size: int = 64
    lr: float = 1e-4
    coef_lr: float = 1e-3
    """CLIP parameters train at lr * coef_lr."""
    weight_decay: float = 0.2
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    seed: int = 42
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    checkpoint_every_steps: int = 0
    """0: checkpoint at the end of every epoch only."""
    max_failures: int = 2
    max_steps: int = 0
    """Stop after this many optimiser steps (0: no limit); for smoke tests."""

    def validate(self, prefix: str = "train") -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "num_workers"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.lr > 0, f"{prefix}.lr", "must be > 0")
        _check(self.coef_lr >= 0, f"{prefix}.coef_lr", "must be >= 0")
        _check(0 <= self.warmup_fraction < 1, f"{prefix}.warmup_fraction", "must be in [0, 1)")
        _check(self.batch_size % self.num_workers == 0, f"{prefix}.batch_size",
               f"{self.batch_size} is not divisible by train.num_workers={self.num_workers}")


@dataclass
class RunConfig:
    name: str = "glccl"
    """Run name: resuming = running again with the same name."""
    experiment: str = "glccl"
    """MLflow experiment."""
    storage: str = "runs"
    """Folder for checkpoints, Ray results and the default MLflow store (made absolute at run time)."""
    register_model: str = ""
    """Register the run's best model in the MLflow model registry under this name (a new version per run); empty:
    not registered (``glccl train --register NAME``)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, prefix: str = "") -> None:
        _check(bool(self.name) and "/" not in self.name, "name", f"must be a non-empty name without '/', got {self.name!r}")
        if self.loss.csc:
            from glccl.heads import get_head_class

            parts = get_head_class(self.model.head).part_names
            _check(len(parts) >= 2, "loss.csc", f"CSC compares two or more score parts; head {self.model.head!r} has "
                   f"one ({parts[0]})")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# ---------------------------------------------------------------------------------------------------------------------
# generic machinery


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return list(obj)
    return obj


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"config key '{key}': bad value {value!r}")
    if origin is dict:
        _check(isinstance(value, dict) and all(isinstance(k, str) for k in value), key,
               f"expected a mapping of names to values, got {value!r}")
        return dict(value)
    if origin is tuple:
        args = get_args(tp)
        _check(isinstance(value, (list, tuple)) and len(value) == len(args), key,
               f"expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        _check(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"config key '{key}': unsupported type {tp}")


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking keys and types; missing keys keep their defaults."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            raise ConfigError(f"unknown config key '{prefix}{k}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, data[f.name], key + ".")
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, key)
    obj = cls(**kwargs)
    validate(obj, prefix.rstrip("."))
    return obj


def validate(obj: Any, prefix: str = "") -> None:
    if hasattr(obj, "validate"):
        obj.validate(prefix) if prefix else obj.validate()
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            validate(v, f"{prefix}.{f.name}" if prefix else f.name)


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{key}': '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {type(data).__name__}")
    return data


T = typing.TypeVar("T")


def load_config(path: str | Path | dict | None = None, overrides: list[str] | None = None,
                cls: type[T] = RunConfig) -> T:
    """Load ``cls`` from a YAML file (or a dict), then apply ``key=value`` overrides."""
    if isinstance(path, dict):
        data = _deepcopy(path)
    else:
        data = read_yaml(path) if path is not None else {}
    for item in overrides or []:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    return from_dict(cls, data)


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d
