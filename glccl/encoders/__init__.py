"""CLIP backbones, pretrained-weight loading and the temporal encoder."""

from glccl.encoders.clip import (
    OPENAI_MEAN,
    OPENAI_STD,
    PRESETS,
    Preset,
    build_clip,
    embed_dim,
    encode_frames,
    encode_text,
    get_preset,
    image_size,
    list_presets,
    normalize_frames,
    preset_image_size,
    register_model_configs,
)
from glccl.encoders.temporal import TemporalTransformer
from glccl.encoders.weights import WeightsError, load_pretrained, read_state_dict

__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "PRESETS",
    "Preset",
    "TemporalTransformer",
    "WeightsError",
    "build_clip",
    "embed_dim",
    "encode_frames",
    "encode_text",
    "get_preset",
    "image_size",
    "list_presets",
    "load_pretrained",
    "normalize_frames",
    "preset_image_size",
    "read_state_dict",
    "register_model_configs",
]
