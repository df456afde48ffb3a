"""Similarity-head interface and registry.

A head turns text features and (temporally encoded) frame features into an *unscaled* text x video score matrix and
its per-granularity parts. The logit scale is applied by the loss, never by the head.

Shapes (everywhere in ``glccl.heads``):

- ``sentence`` ``[Bt, D]``: sentence (EOT) feature per text.
- ``words`` ``[Bt, Nw, D]``, ``word_mask`` ``[Bt, Nw]`` bool (True = real token).
- ``frames`` ``[Bv, K, D]`` (after the temporal encoder), ``frame_mask`` ``[Bv, K]`` bool (True = real frame).
- returns ``score`` ``[Bt, Bv]`` and ``parts`` ``[Bt, Bv, P]`` with ``P = head.num_parts``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor, nn

_HEADS: dict[str, type[SimilarityHead]] = {}


class SimilarityHead(nn.Module):
    """Base class: ``forward(sentence, words, word_mask, frames, frame_mask) -> (score [Bt,Bv], parts [Bt,Bv,P])``."""

    name: str = ""
    num_parts: int = 1
    aux_loss_names: tuple[str, ...] = ()
    uses_temporal: bool = True
    """False: the model feeds this head the CLIP frame features without the temporal encoder (CLIP4Clip meanP)."""

    def forward(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def aux_losses(self, sentence: Tensor, words: Tensor, word_mask: Tensor, frames: Tensor,
                   frame_mask: Tensor) -> dict[str, Tensor]:
        """Extra training losses of this head, keyed by the names in ``aux_loss_names`` (none by default)."""
        return {}


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


def list_heads() -> list[str]:
    """Names of the registered heads, sorted."""
    return sorted(_HEADS)


def build_head(name: str, *, num_words: int, num_frames: int, dim: int, **kwargs) -> SimilarityHead:
    """Instantiate a registered head.

    Extra keyword arguments go to the head's constructor; a keyword the head does not declare raises ``TypeError``
    (heads declare the common ones such as ``temperature`` even when they ignore them).
    """
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; known heads: {', '.join(list_heads()) or '(none)'}")
    cls = _HEADS[name]
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(f"head {name!r} does not accept {unknown}; it takes {sorted(set(params) - {'self'})}")
    return cls(num_words=num_words, num_frames=num_frames, dim=dim, **kwargs)


def effective_masks(word_mask: Tensor, frame_mask: Tensor, mask_padding: bool) -> tuple[Tensor, Tensor]:
    """Bool masks, or all-true ones when ``mask_padding`` is False (the released code's unmasked behaviour)."""
    if not mask_padding:
        return torch.ones_like(word_mask, dtype=torch.bool), torch.ones_like(frame_mask, dtype=torch.bool)
    return word_mask.bool(), frame_mask.bool()
