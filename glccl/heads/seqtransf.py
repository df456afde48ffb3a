"""CLIP4Clip seqTransf head: temporal transformer + mean pooling (``ArrowLuo/CLIP4Clip``, sim_header seqTransf).

The temporal encoder (seqTransf) runs in the model before every head that declares ``uses_temporal``, so the head
itself is the parameter-free ``score[i, j] = cos(s_i, mean of the normalised f_jk)`` over the temporally encoded
frames. It differs from ``meanp`` (CLIP4Clip meanP) only in ``uses_temporal = True``.
"""

from __future__ import annotations

from .base import register_head
from .meanp import MeanPHead


@register_head("seqtransf")
class SeqTransfHead(MeanPHead):
    """MeanP over the temporally encoded frames; parts ``[Bt, Bv, 1]``. Parameter-free; a video without any valid
    frame scores 0."""

    uses_temporal = True
    release = "ArrowLuo/CLIP4Clip modules/modeling.py (sim_header seqTransf)"

