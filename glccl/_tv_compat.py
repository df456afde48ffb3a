"""Make ``import torchvision`` work with the CPU build of torch 2.13.

The only torchvision release built for torch 2.13 (0.28.0) is a CUDA build; on a CPU torch its import dies with
``operator torchvision::nms does not exist`` because the compiled ops library fails to register. open_clip and timm
import torchvision, so every process that imports open_clip (Ray workers included) must run this first. We register
the two op schemas torchvision's python code looks up at import time; the ops themselves stay unusable (CLIP needs
none of them). On a machine where the real ops exist this does nothing.
"""

from __future__ import annotations

import torch

_LIB: torch.library.Library | None = None  # kept alive for the life of the process


def ensure_torchvision_importable() -> None:
    global _LIB
    if _LIB is not None:
        return
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute access raises when the op is missing
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB = lib


ensure_torchvision_importable()
