"""CLIP BPE tokenisation at a fixed length (SOT + BPE[:max_words-2] + EOT, zero padded).

open_clip ships the BPE vocabulary in its wheel, so this never touches the network. Matches the X-CLIP loader's ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from glccl import _tv_compat  # noqa: F401  (must precede open_clip)

SOT_ID = 49406
EOT_ID = 49407
_TOKENIZER = None


def _get():
    global _TOKENIZER
    if _TOKENIZER is None:
        from open_clip.tokenizer import SimpleTokenizer

        _TOKENIZER = SimpleTokenizer()
    return _TOKENIZER


def tokenize(texts: str | Sequence[str], max_words: int = 32) -> torch.Tensor:
    """Returns LongTensor ``[B, max_words]``; truncation keeps EOT last. Word mask = ``tokens != 0``."""
    if isinstance(texts, str):
        texts = [texts]
    return _get()(list(texts), context_length=max_words)


def word_mask(tokens: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]``: True at SOT, the BPE tokens and EOT; False at padding (id 0)."""
    return tokens != 0
