"""Typed run configuration: frozen dataclasses loaded from YAML with ``key=value`` overrides.

One tree (``RunConfig``) holds every setting of a run; each section is a frozen dataclass whose fields are the schema
and whose attribute docstrings are its documentation (``glccl config --list`` prints them). YAML maps onto it one to
one, dotted overrides address the same keys (``model.head=meanp``, ``train.lr=3e-4``), and sweeps search over the same
dotted keys. Every construction is checked, ``dataclasses.replace`` included: an unknown key or a value of the wrong
type or range raises ``ConfigError`` naming the dotted key.

    cfg = load_config("configs/demo.yaml", ["loss.eta=0.3", "model.num_frames=8"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=3e-4))  # validated again
    cfg.to_dict()  # plain nested dict, e.g. for logging
    flatten(cfg.to_dict())  # {"loss.eta": 0.3, ...}

The library reads ``model``, ``loss``, ``data`` and ``train``; ``scaling`` (how many Ray Train workers, GPUs, retries)
is read only by the platform layer in ``pipelines/`` and ``sweeps/``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


T = typing.TypeVar("T")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


class Section:
    """Base of every config section: a frozen dataclass, type-checked and validated when it is constructed.

    A subclass sets ``SECTION`` (the dotted prefix of its keys; empty at the root) and overrides :meth:`validate` for
    range and cross-field checks. ``__post_init__`` runs on every construction (direct, :func:`from_dict`,
    ``dataclasses.replace``): it checks each field against its type hint, normalising the forms YAML and JSON produce
    (an int for a float, a list for a tuple, a mapping for a nested section), then calls :meth:`validate`.
    """

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            tp, value, key = hints[f.name], getattr(self, f.name), self.key(f.name)
            if _is_section(tp):
                if isinstance(value, dict):  # a saved config (JSON, a pickled dict) read back
                    value = from_dict(tp, value)
                _check(isinstance(value, tp), key, f"expected a mapping (a {tp.__name__}), got {value!r}")
            else:
                value = _coerce(value, tp, key)
            object.__setattr__(self, f.name, value)  # frozen: the normalised value replaces the given one
        self.validate()

    @classmethod
    def key(cls, name: str) -> str:
        """The dotted key of field ``name`` (``model.num_frames``)."""
        return f"{cls.SECTION}.{name}" if cls.SECTION else name

    def check(self, cond: bool, name: str, msg: str) -> None:
        """``ConfigError`` naming this section's key ``name`` unless ``cond``."""
        _check(cond, self.key(name), msg)

    def validate(self) -> None:
        """Range and cross-field checks (see :meth:`check`); the section's fields are type-checked already."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass(frozen=True)
class ModelConfig(Section):
    """The model: encoder preset and weights, similarity head, input lengths."""

    SECTION = "model"

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
    """Recompute the towers' activations in the backward pass: less memory for a slower step."""
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

    def validate(self) -> None:
        k = self.key
        # torch, and open_clip for the presets: imported only where a model config is checked, so that reading the
        # schema (``glccl config --list``) stays cheap
        from glccl.heads import check_head_args, list_heads
        from glccl.model import list_presets

        _check(self.preset in list_presets(), k("preset"),
               f"unknown preset {self.preset!r} (known: {', '.join(list_presets())})")
        _check(self.num_frames >= 1, k("num_frames"), f"must be >= 1, got {self.num_frames}")
        _check(self.max_words >= 3, k("max_words"), f"must be >= 3 (SOT, a token, EOT), got {self.max_words}")
        _check(self.temporal_layers >= 0, k("temporal_layers"), "must be >= 0")
        _check(self.head in list_heads(), k("head"), f"unknown head {self.head!r} (known: {', '.join(list_heads())})")
        problem = check_head_args(self.head, self.head_args)
        _check(problem is None, k(f"head_args.{(problem or '').split(':')[0]}"), (problem or "").partition(": ")[2])
        _check(self.sim_chunk >= 1, k("sim_chunk"), "must be >= 1")
        _check(self.logit_scale_init is None or self.logit_scale_init > 0, k("logit_scale_init"),
               f"must be > 0 (the scale itself, not its log), got {self.logit_scale_init}")


@dataclass(frozen=True)
class LossConfig(Section):
    """The training loss: InfoNCE over the head's score, plus GLCCL's CSC term."""

    SECTION = "loss"

    csc: bool | None = None
    """GLCCL's CSC term. None: the head's own loss (CSC for GLCCL only; ``glccl heads`` shows each recipe). true adds
    CSC to another multi-part head (an ablation), false removes it from GLCCL."""
    eta: float = 0.5
    """Weight of the CSC loss: total = InfoNCE + eta * CSC (README value 0.5; code default 0.1)."""
    logit_scale_max: float = 100.0
    """Bound on exp(logit_scale), applied to the parameter after every optimiser step (as the release does)."""
    clamp_in_loss: bool = False
    """Also clamp exp(logit_scale) inside the loss: the logit scale then gets zero gradient at the bound."""

    def validate(self) -> None:
        _check(self.eta >= 0, self.key("eta"), f"must be >= 0, got {self.eta}")
        _check(self.logit_scale_max > 0, self.key("logit_scale_max"), "must be > 0")


@dataclass(frozen=True)
class DataConfig(Section):
    """The benchmark, where its files are, and how videos are decoded."""

    SECTION = "data"

    dataset: str = "synth"
    """Benchmark adapter: synth, msrvtt, msvd, didemo, vatex."""
    root: str = "data/synth"
    """Folder with the annotation files (and, unless ``video_dir`` is set, the videos)."""
    video_dir: str | None = None
    """Folder with the videos when they are not under ``root``; None: the adapter's place under ``root``."""
    manifest: str | None = None
    """A prepared manifest parquet; built from ``root`` when None."""
    cache: str | None = None
    """A parquet frame cache written by ``glccl data prepare``; training reads it instead of decoding. Or a feature
    cache written by ``glccl data features``: training then reads per-frame CLIP features and keeps the frame tower
    that computed them (``model.pretrained``) frozen, training text tower + temporal encoder + head."""
    train_split: str = "train"
    """Split trained on."""
    val_split: str = "val"
    """Split validated on after every epoch (it picks the best checkpoint)."""
    test_split: str = "test"
    """Split the best checkpoint is tested on once, at the end."""
    decoder: str = "decord"
    """decord or pyav (decord falls back to pyav where it is not installed)."""
    max_skip_fraction: float = 0.01
    """Exit non-zero when more than this share of items is skipped as bad input."""
    strict: bool = False
    """Stop at the first bad item instead of skipping it."""
    decode_timeout_s: float = 60.0
    """Seconds one video may take to decode before it counts as bad input."""
    decode_cpus: float = 1.0
    """CPUs per decode task in Ray Data."""
    decode_batch_size: int = 8
    """Items per Ray Data map task (one block): videos decoded, or clips read from the frame cache."""
    allow_split_overlap: bool = False
    """Allow videos of the training split in the validation or test split (an error otherwise: the test would score
    memorisation). For benchmarks whose protocol shares them on purpose."""
    cache_factor: int = 3
    """A frame cache holds cache_factor * K frames per video (segment sub-centres); training samples among them,
    evaluation reads the exact segment centres when the factor is odd. 1: cache exactly the K evaluation frames."""

    def validate(self) -> None:
        k = self.key
        _check(self.dataset in ("synth", "msrvtt", "msvd", "didemo", "vatex"), k("dataset"),
               f"unknown dataset {self.dataset!r} (synth, msrvtt, msvd, didemo, vatex)")
        _check(self.decoder in ("decord", "pyav"), k("decoder"), f"unknown decoder {self.decoder!r}")
        _check(0 <= self.max_skip_fraction <= 1, k("max_skip_fraction"), "must be in [0, 1]")
        _check(self.decode_timeout_s > 0, k("decode_timeout_s"), "must be > 0")
        _check(self.decode_cpus > 0, k("decode_cpus"), "must be > 0")
        _check(self.decode_batch_size >= 1, k("decode_batch_size"), "must be an integer >= 1")
        _check(self.cache_factor >= 1, k("cache_factor"), "must be an integer >= 1")


@dataclass(frozen=True)
class TrainConfig(Section):
    """The optimisation: epochs, global batch, learning rates, checkpoints. Independent of how many workers run it."""

    SECTION = "train"

    epochs: int = 5
    """Passes over the training split."""
    batch_size: int = 128
    """Global batch (split across ``scaling.num_workers``); the contrastive loss runs over the whole global batch."""
    eval_batch_size: int = 64
    """Items per batch when encoding the validation and test splits."""
    lr: float = 1e-4
    """Learning rate of everything outside CLIP (temporal encoder, head) after the warm-up; cosine decay after it."""
    coef_lr: float = 1e-3
    """CLIP parameters train at lr * coef_lr."""
    weight_decay: float = 0.2
    """AdamW (decoupled) weight decay; biases, norms and the logit scale get none."""
    warmup_fraction: float = 0.1
    """Share of the optimiser steps spent warming the learning rate up linearly from 0."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0: no clipping."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    eps: float = 1e-6
    """AdamW epsilon."""
    seed: int = 42
    """Seeds the initialisation (identical on every worker) and the data order."""
    checkpoint_every_steps: int = 0
    """Also checkpoint every this many optimiser steps within an epoch; 0: at the end of every epoch only."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0: no limit); for smoke tests."""
    register_model: str = ""
    """Register the best model in the MLflow model registry under this name (a new version per run); "": not
    registered (it is logged with the run either way)."""

    def validate(self) -> None:
        k = self.key
        for name in ("epochs", "batch_size", "eval_batch_size"):
            _check(getattr(self, name) >= 1, k(name), f"must be >= 1, got {getattr(self, name)}")
        _check(self.lr > 0, k("lr"), "must be > 0")
        _check(self.coef_lr >= 0, k("coef_lr"), "must be >= 0")
        _check(self.weight_decay >= 0, k("weight_decay"), "must be >= 0")
        _check(0 <= self.warmup_fraction < 1, k("warmup_fraction"), "must be in [0, 1)")
        _check(self.grad_clip >= 0, k("grad_clip"), "must be >= 0 (0: no clipping)")
        _check(self.eps > 0, k("eps"), "must be > 0")
        _check(self.checkpoint_every_steps >= 0, k("checkpoint_every_steps"), "must be >= 0")
        _check(self.max_steps >= 0, k("max_steps"), "must be >= 0")


@dataclass(frozen=True)
class ScalingConfig(Section):
    """How a run is spread over Ray. Read only by the platform layer (``pipelines/``, ``sweeps/``), which turns it into
    Ray Train's ``ScalingConfig`` and ``FailureConfig``; the library never reads it."""

    SECTION = "scaling"

    num_workers: int = 2
    """Ray Train workers, one process each; ``train.batch_size`` is split evenly across them."""
    use_gpu: bool = False
    """One GPU per worker; false: CPU workers."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves for each worker; a CPU worker also runs that many torch threads."""
    max_failures: int = 2
    """Restarts of lost workers (from the last checkpoint) before the run fails; -1: no limit."""

    def validate(self) -> None:
        _check(self.num_workers >= 1, self.key("num_workers"), f"must be >= 1, got {self.num_workers}")
        _check(self.cpus_per_worker > 0, self.key("cpus_per_worker"), "must be > 0")
        _check(self.max_failures >= -1, self.key("max_failures"), "must be >= 0, or -1 for no limit")


@dataclass(frozen=True)
class RunConfig(Section):
    """One run: its name and storage, and every section."""

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
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    def validate(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "name", f"must be a non-empty name without '/', got {self.name!r}")
        # the global batch is split evenly: an uneven split would give ranks different local batches
        _check(self.train.batch_size % self.scaling.num_workers == 0, self.train.key("batch_size"),
               f"{self.train.batch_size} is not divisible by scaling.num_workers={self.scaling.num_workers}")
        if self.loss.csc:
            from glccl.heads import get_head_class

            parts = get_head_class(self.model.head).part_names
            _check(len(parts) >= 2, "loss.csc", f"CSC compares two or more score parts; head {self.model.head!r} has "
                   f"one ({parts[0]})")


# Keys that moved to another section: reading one is an error that says where it went (a silently ignored setting,
# or one read from the old place by half the code, is worse than a stopped run).
MOVED_KEYS: dict[str, str] = {f"train.{name}": f"scaling.{name}"
                              for name in ("num_workers", "use_gpu", "cpus_per_worker", "max_failures")}


# ---------------------------------------------------------------------------------------------------------------------
# generic machinery


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
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
    if origin is Literal:
        choices = get_args(tp)
        _check(value in choices, key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is dict:
        _check(isinstance(value, dict) and all(isinstance(k, str) for k in value), key,
               f"expected a mapping of names to values, got {value!r}")
        return dict(value)
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            _check(isinstance(value, (list, tuple)), key, f"expected a list, got {value!r}")
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
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


def _moved_error(keys: list[str]) -> ConfigError:
    first, *rest = keys
    also = "".join(f"; '{k}' moved to '{MOVED_KEYS[k]}'" for k in rest)
    return ConfigError(f"config key '{first}' moved to '{MOVED_KEYS[first]}'{also}")


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str | None = None) -> T:
    """Build section ``cls`` from a nested dict, checking keys; missing keys keep their defaults.

    Types and ranges are checked by the section's own construction (:class:`Section`). ``prefix`` defaults to the
    section's own (``model.``).
    """
    if prefix is None:
        section = getattr(cls, "SECTION", "")
        prefix = f"{section}." if section else ""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {data!r}")
    hints = _hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    unknown = [k for k in data if k not in names]
    moved = [f"{prefix}{k}" for k in unknown if f"{prefix}{k}" in MOVED_KEYS]
    if moved:
        raise _moved_error(moved)
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    for f in fields:
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key '{prefix}{f.name}'")
    kwargs = {}
    for f in fields:
        if f.name in data:
            value = data[f.name]
            kwargs[f.name] = from_dict(hints[f.name], value, f"{prefix}{f.name}.") if _is_section(hints[f.name]) else value
    return cls(**kwargs)


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config mapping that this program saved before keys moved (a checkpoint's, a saved sweep's), with
    each moved key at its new place. Only for saved configs: in a config a person writes, a moved key is an error
    that says where the key went."""
    data = _deepcopy(data)
    for old, new in MOVED_KEYS.items():
        (old_section, old_name), (new_section, new_name) = old.split("."), new.split(".")
        section = data.get(old_section)
        if isinstance(section, dict) and old_name in section:
            value = section.pop(old_name)
            data.setdefault(new_section, {}).setdefault(new_name, value)
    return data


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one silently: a section
    written twice would lose the first one's settings)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a dict; ``ConfigError`` for a missing or unreadable file, invalid YAML or a repeated key.
    A UTF-8 byte-order mark is accepted."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory, not a file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} could not be read: {e}") from e
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:  # one line: the problem and where, not PyYAML's multi-line report
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {type(data).__name__}")
    return data



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


# ---------------------------------------------------------------------------------------------------------------------
# the schema as documentation


@dataclass(frozen=True)
class KeyDoc:
    """One entry of :func:`describe`: a key, or (``section`` true) the header of a nested section."""

    key: str
    type: str
    default: Any
    doc: str
    section: bool = False


REQUIRED = object()
"""The ``default`` of a key that has none."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of ``cls``: the string literal written right under each field, read from the source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    out = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            out[node.target.id] = inspect.cleandoc(nxt.value.value)
    return out


def describe(cls: type = RunConfig, prefix: str = "") -> list[KeyDoc]:
    """Every key of ``cls`` in source order, nested sections expanded after a header entry."""
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", _hints(cls)[f.name]
        if _is_section(tp):
            out.append(KeyDoc(key, tp.__name__, None, inspect.cleandoc(tp.__doc__ or ""), section=True))
            out += describe(tp, key + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        out.append(KeyDoc(key, str(f.type), to_dict(default), docs.get(f.name, "")))
    return out
