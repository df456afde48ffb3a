"""glccl: GLCCL text-video retrieval in pure PyTorch + open_clip (no Ray, no MLflow).

    import glccl
    model = glccl.create_model("tiny", head="glccl")            # or "vit-b-32" with pretrained="ViT-B-32.pt"
    tokens = model.tokenize(["a red circle moves left"])
    out = model(tokens, frames, frame_mask)                   # frames: uint8 [B, K, 3, H, W]
    score, parts = model.score(**{k: out[k] for k in glccl.FEATURE_KEYS})
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Lazy: ``import glccl.data.frames`` (in a Ray decode worker, say) must not pay for torch and open_clip.
_LAZY = {"FEATURE_KEYS": "glccl.engine", "GLCCL": "glccl.model", "create_model": "glccl.model",
         "create_model_from_config": "glccl.model", "list_presets": "glccl.model", "preset_image_size": "glccl.model"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'glccl' has no attribute {name!r}")

__all__ = ["FEATURE_KEYS", "GLCCL", "create_model", "create_model_from_config", "list_presets", "preset_image_size"]
