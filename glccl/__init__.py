"""glccl: GLCCL text-video retrieval in pure PyTorch + open_clip (no Ray, no MLflow).

    import glccl
    model = glccl.create_model("tiny", head="glccl")            # or "vit-b-32" with pretrained="ViT-B-32.pt"
    tokens = model.tokenize(["a red circle moves left"])
    out = model(tokens, frames, frame_mask)                   # frames: uint8 [B, K, 3, H, W]
    score, parts = model.score(**{k: out[k] for k in glccl.FEATURE_KEYS})
"""

from glccl.engine import FEATURE_KEYS
from glccl.model import GLCCL, create_model, create_model_from_config, list_presets, preset_image_size

__version__ = "0.1.0"

__all__ = ["FEATURE_KEYS", "GLCCL", "create_model", "create_model_from_config", "list_presets", "preset_image_size"]
