"""CLIP backbones (open_clip ``CLIP``) and the two feature extractors GLCCL needs from them.

Presets name an open_clip architecture; nothing here touches the network (weights come from
:mod:`glccl.encoders.weights`). The extractors are plain functions over an open_clip ``CLIP`` so that the model keeps the
CLIP under one attribute and its state-dict keys stay OpenAI's (``visual.conv1.weight``, ``transformer.resblocks.0...``).

    clip = build_clip("tiny")
    sentence, words, word_mask = encode_text(clip, tokens)  # [B,D], [B,L,D], [B,L]
    frames = encode_frames(clip, video_uint8)  # [B,K,3,H,W] -> [B,K,D]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from glccl import _tv_compat

_tv_compat.ensure_torchvision_importable()  # before open_clip imports torchvision

import open_clip  # noqa: E402

# OpenAI CLIP pixel statistics (open_clip.constants.OPENAI_DATASET_MEAN / STD).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"


@dataclass(frozen=True)
class Preset:
    name: str
    open_clip_name: str
    """Architecture name in open_clip's registry."""
    description: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny", "glccl-tiny", "2-layer ViT-S/16 at 64 px + 2-layer text, D=128 (tests; random init)"),
        Preset("tiny-rn", "glccl-tiny-rn", "CLIP ModifiedResNet [1,1,1,1] width 8 at 64 px + 2-layer text, D=128 "
               "(learns shapes from scratch faster than the tiny ViT; random init)"),
        Preset("tiny-rn-32", "glccl-tiny-rn-32", "tiny-rn at 32 px: a quarter of its frame-tower cost, as accurate per "
               "step on the synthetic benchmark (the demo; random init)"),
        Preset("vit-b-32", "ViT-B-32-quickgelu", "OpenAI CLIP ViT-B/32 (QuickGELU), D=512, 224 px"),
        Preset("vit-b-16", "ViT-B-16-quickgelu", "OpenAI CLIP ViT-B/16 (QuickGELU), D=512, 224 px"),
    )
}


def list_presets() -> list[str]:
    """Names accepted by :func:`build_clip` and ``create_model(preset=...)``."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None


def register_model_configs() -> None:
    """Make glccl's own architectures (``glccl-*.json``) known to open_clip; idempotent."""
    known = set(open_clip.list_models())
    for path in sorted(_CONFIG_DIR.glob("glccl-*.json")):
        if path.stem not in known:
            open_clip.add_model_config(path)


def preset_image_size(preset: str) -> int:
    """Frame size (pixels, square) that ``preset`` expects, read from its config without building the model."""
    register_model_configs()
    cfg = open_clip.get_model_config(get_preset(preset).open_clip_name)
    size = cfg["vision_cfg"]["image_size"]
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def build_clip(preset: str = "tiny") -> nn.Module:
    """A randomly initialised open_clip ``CLIP`` for ``preset`` (fp32, CPU). Never downloads anything."""
    p = get_preset(preset)
    register_model_configs()
    # open_clip logs a warning for every randomly initialised model; that is the normal case here.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        return open_clip.create_model(p.open_clip_name, pretrained=None)
    finally:
        logger.setLevel(level)


def embed_dim(clip: nn.Module) -> int:
    proj = clip.text_projection
    return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]


def image_size(clip: nn.Module) -> int:
    size = clip.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def encode_text(clip: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sentence and per-token features, as X-CLIP computes them.

    Args:
        clip: an open_clip ``CLIP``.
        tokens: LongTensor ``[B, L]`` (SOT ... EOT, zero padded), ``L <= context_length``.

    Returns:
        sentence ``[B, D]`` (projected feature at the EOT, i.e. ``tokens.argmax(-1)``), words ``[B, L, D]``
        (``ln_final`` then the projection at every position, padding included) and word_mask ``[B, L]`` bool
        (``tokens != 0``).
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [B, L], got shape {tuple(tokens.shape)}")
    length = tokens.shape[1]
    if length > clip.positional_embedding.shape[0]:
        raise ValueError(f"{length} tokens exceed the text context length {clip.positional_embedding.shape[0]}")
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast_dtype)
    x = x + clip.positional_embedding[:length].to(cast_dtype)
    # The mask is purely causal, so running at L gives the first L outputs of a run at the full context length.
    attn_mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
    x = clip.transformer(x, attn_mask=attn_mask)  # open_clip 3.x: batch-first [B, L, W]
    x = clip.ln_final(x)
    proj = clip.text_projection
    words = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    sentence = words[torch.arange(words.shape[0], device=words.device), tokens.argmax(dim=-1)]
    return sentence, words, tokens != 0


def normalize_frames(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels (0-255) -> OpenAI-normalised floats; float input is returned as ``dtype`` unchanged."""
    if frames.dtype == torch.uint8:
        mean = torch.tensor(OPENAI_MEAN, device=frames.device).view(3, 1, 1)
        std = torch.tensor(OPENAI_STD, device=frames.device).view(3, 1, 1)
        frames = (frames.float() / 255.0 - mean) / std
    elif not frames.is_floating_point():
        raise ValueError(f"frames must be uint8 (0-255) or float (normalised), got {frames.dtype}")
    return frames.to(dtype)


def encode_frames(clip: nn.Module, frames: torch.Tensor, frame_mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame CLIP image features (CLS after ``ln_post``, projected).

    Args:
        clip: an open_clip ``CLIP``.
        frames: ``[B, K, 3, H, W]``, uint8 0-255 (normalised here with OpenAI mean/std) or float (already normalised).
            H and W must equal the preset's image size.
        frame_mask: bool ``[B, K]`` (True = real frame) or None (all real). Padded frames are still encoded, as in
            the released code; the mask is only passed through.

    Returns:
        features ``[B, K, D]`` and frame_mask ``[B, K]`` bool.
    """
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be [B, K, 3, H, W], got shape {tuple(frames.shape)}")
    b, k, _, h, w = frames.shape
    size = image_size(clip)
    if (h, w) != (size, size):
        raise ValueError(f"frames are {h}x{w} but this CLIP expects {size}x{size}")
    if frame_mask is None:
        frame_mask = torch.ones(b, k, dtype=torch.bool, device=frames.device)
    elif frame_mask.shape != (b, k):
        raise ValueError(f"frame_mask must be [B, K] = {(b, k)}, got {tuple(frame_mask.shape)}")
    x = normalize_frames(frames.reshape(b * k, 3, h, w), dtype=clip.visual.conv1.weight.dtype)
    feats = clip.encode_image(x)
    return feats.reshape(b, k, -1), frame_mask.bool()
