"""The similarity-head contract and the head registry.

A head turns text features and frame features into an *unscaled* text x video score matrix and its per-granularity
parts. The logit scale is applied by the loss, never by the head.

Shapes (everywhere in ``glccl.heads``):

- ``sentence`` ``[Bt, D]``: sentence (EOT) feature per text.
- ``words`` ``[Bt, Nw, D]``, ``word_mask`` ``[Bt, Nw]`` bool (True = real token).
- ``frames`` ``[Bv, K, D]``, ``frame_mask`` ``[Bv, K]`` bool (True = real frame).
- returns ``score`` ``[Bt, Bv]`` and ``parts`` ``[Bt, Bv, P]`` with ``P = len(head.part_names)``.

Everything the platform uses of a head is declared on :class:`SimilarityHead` below; nothing is probed with
``getattr``. A new head is one module with a :class:`SimilarityHead` subclass plus one entry in :data:`BUILTIN_HEADS`
(or, outside this package, the :func:`register_head` decorator); the contract tests run over :func:`list_heads`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

# name -> module that defines (and registers) the head. Imported on first use, so listing or building one head does
# not import the others.
BUILTIN_HEADS: dict[str, str] = {
    "glccl": "glccl.heads.glccl",
    "glscl": "glccl.heads.glscl",
    "meanp": "glccl.heads.meanp",
    "seqtransf": "glccl.heads.seqtransf",
    "tcmgc": "glccl.heads.tcmgc",
    "xclip": "glccl.heads.xclip",
    "xpool": "glccl.heads.xpool",
}

# Constructor arguments every head takes from the model, not from ``model.head_args``.
SHAPE_ARGS = ("num_words", "num_frames", "dim", "mask_padding")

_HEADS: dict[str, type[SimilarityHead]] = {}


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """One constructor keyword of a head that a config may set (``model.head_args.<name>``)."""

    name: str
    default: Any
    annotation: str

    def check(self, value: Any) -> str | None:
        """None when ``value`` fits the declared type, else the reason (for a one-line config error)."""
        ann = self.annotation.replace(" ", "")
        kinds = set(ann.split("|"))
        if value is None:
            return None if "None" in kinds else "must not be null"
        if isinstance(value, bool):
            return None if "bool" in kinds else f"expected {self.annotation}, got {value!r}"
        if isinstance(value, int) and kinds & {"int", "float"}:
            return None
        if isinstance(value, float) and "float" in kinds:
            return None
        if isinstance(value, str) and "str" in kinds:
            return None
        return f"expected {self.annotation}, got {value!r}"


class SimilarityHead(nn.Module):
    """Base class of every similarity head: what the platform may rely on.

    Class attributes (declared by each head):

    - ``name``: registry name (set by the registry).
    - ``part_names``: the per-granularity scores returned in ``parts``, in order; ``num_parts`` is their count.
    - ``uses_temporal``: False when the model should feed the CLIP frame features without the temporal encoder
      (CLIP4Clip meanP).
    - ``aux_loss_names``: the head's own training-loss terms returned by :meth:`aux_losses` (GLSCL's ICL/IDL,
      TC-MGC's SDR), added to InfoNCE unweighted (their weights are head hyperparameters).
    - ``default_csc``: whether the authors' loss includes GLCCL's CSC term (True for GLCCL only). The loss of a head
      is therefore ``InfoNCE [+ eta * CSC] + sum(aux_losses)``: see :meth:`loss_terms`.
    - ``release``: the released code whose scoring ``mask_padding=False`` reproduces exactly (padding included).

    Constructor: ``(num_words, num_frames, dim, mask_padding=True, **hyperparameters)``. ``mask_padding=True`` masks
    padded words and frames everywhere (this project's choice); ``False`` treats padding exactly as the head's release
    does (which differs per head: see each head's docstring). Every other keyword is a hyperparameter
    (:meth:`hyperparameters`) with the released code's value as its default.
    """

    name: ClassVar[str] = ""
    part_names: ClassVar[tuple[str, ...]] = ("score",)
    uses_temporal: ClassVar[bool] = True
    aux_loss_names: ClassVar[tuple[str, ...]] = ()
    default_csc: ClassVar[bool] = False
    release: ClassVar[str] = ""

    @property
    def num_parts(self) -> int:
        return len(self.part_names)

    # -- scoring ------------------------------------------------------------------------------------------------------

    def forward(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Every text x every video: score ``[Bt, Bv]``, parts ``[Bt, Bv, P]`` (unscaled)."""
        raise NotImplementedError

    def score_pairs(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor, frame_mask: Tensor,
                    index: Tensor) -> tuple[Tensor, Tensor]:
        """Each text against its own videos: text i with the rows ``index[i]`` (``[Bt, S]``) of ``frames``.

        Returns score ``[Bt, S]`` and parts ``[Bt, S, P]``, the values :meth:`forward` gives for those pairs (search
        re-ranks per-query shortlists with it). This fallback calls :meth:`forward` once per text on its gathered
        videos; heads with a batched form (GLCCL) override it.
        """
        if index.ndim != 2 or index.shape[0] != sentence.shape[0]:
            raise ValueError(f"index must be [Bt, S] for Bt = {sentence.shape[0]} texts, got {tuple(index.shape)}")
        scores, parts = [], []
        for i in range(sentence.shape[0]):
            idx = index[i].long()
            s, p = self(sentence[i:i + 1], words[i:i + 1], word_mask[i:i + 1], frames[idx], frame_mask[idx])
            scores.append(s[0])
            parts.append(p[0])
        if not scores:
            return sentence.new_zeros(0, index.shape[1]), sentence.new_zeros(0, index.shape[1], self.num_parts)
        return torch.stack(scores), torch.stack(parts)

    @staticmethod
    def flops(Bt: int, Bv: int, Nw: int, K: int, D: int) -> int:
        """Similarity-stage FLOPs at the default hyperparameters (2 per multiply-add; elementwise work not counted)."""
        raise NotImplementedError

    # -- training -----------------------------------------------------------------------------------------------------

    def aux_losses(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor, frame_mask: Tensor,
                   scale: Tensor) -> dict[str, Tensor]:
        """The head's own loss terms on the paired global batch (text i describes video i), keyed by
        ``aux_loss_names``. ``scale`` is λ = exp(logit_scale) as the loss uses it (for terms the release computes on
        scaled scores)."""
        return {}

    @classmethod
    def loss_terms(cls, csc: bool | None = None) -> tuple[str, ...]:
        """The terms of this head's training loss: ``("infonce", ["csc",] *aux_loss_names)``.

        Args:
            csc: None for the authors' loss (CSC only where ``default_csc``); True adds CSC (an ablation for the other
                heads; needs two or more parts); False removes it.
        """
        use_csc = cls.default_csc if csc is None else csc
        return ("infonce",) + (("csc",) if use_csc else ()) + tuple(cls.aux_loss_names)

    @classmethod
    def hyperparameters(cls) -> dict[str, Hyperparameter]:
        """Constructor keywords a config may set, with their defaults (the released code's values)."""
        out = {}
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if p.name in SHAPE_ARGS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
            out[p.name] = Hyperparameter(p.name, p.default, ann)
        return out


def register_head(name: str) -> Callable[[type[SimilarityHead]], type[SimilarityHead]]:
    """Class decorator: register a :class:`SimilarityHead` subclass under ``name`` (also sets ``cls.name``)."""

    def deco(cls: type[SimilarityHead]) -> type[SimilarityHead]:
        if not (isinstance(cls, type) and issubclass(cls, SimilarityHead)):
            raise TypeError(f"register_head({name!r}): {cls!r} is not a SimilarityHead subclass")
        if name in _HEADS and _HEADS[name] is not cls:
            raise ValueError(f"head {name!r} is already registered ({_HEADS[name].__qualname__})")
        cls.name = name
        _HEADS[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    for module in BUILTIN_HEADS.values():
        importlib.import_module(module)


def list_heads() -> list[str]:
    """Names of the registered heads (the built-in ones and any registered with :func:`register_head`), sorted."""
    _load_builtins()
    return sorted(_HEADS)


def get_head_class(name: str) -> type[SimilarityHead]:
    """The head class registered under ``name``; ``ValueError`` naming the known heads otherwise."""
    if name not in _HEADS and name in BUILTIN_HEADS:
        importlib.import_module(BUILTIN_HEADS[name])
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; known heads: {', '.join(list_heads())}")
    return _HEADS[name]


def check_head_args(name: str, head_args: dict[str, Any]) -> str | None:
    """None when ``head_args`` are hyperparameters of head ``name`` with fitting values, else ``"key: reason"``."""
    declared = get_head_class(name).hyperparameters()
    for key, value in head_args.items():
        if key not in declared:
            known = ", ".join(sorted(declared)) or "none"
            return f"{key}: head {name!r} has no such hyperparameter (it has: {known})"
        problem = declared[key].check(value)
        if problem:
            return f"{key}: {problem}"
    return None


def build_head(name: str, *, num_words: int, num_frames: int, dim: int, mask_padding: bool = True,
               **head_args) -> SimilarityHead:
    """Instantiate a registered head; ``head_args`` must be its declared hyperparameters (``ValueError`` otherwise)."""
    problem = check_head_args(name, head_args)
    if problem:
        raise ValueError(f"head_args.{problem}")
    return get_head_class(name)(num_words=num_words, num_frames=num_frames, dim=dim, mask_padding=mask_padding,
                                **head_args)


def effective_masks(word_mask: Tensor, frame_mask: Tensor, mask_padding: bool) -> tuple[Tensor, Tensor]:
    """Bool masks, or all-true ones when ``mask_padding`` is False (padding takes part, as in a release that masks
    nothing)."""
    if not mask_padding:
        return torch.ones_like(word_mask, dtype=torch.bool), torch.ones_like(frame_mask, dtype=torch.bool)
    return word_mask.bool(), frame_mask.bool()
