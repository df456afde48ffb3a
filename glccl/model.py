"""The GLCCL model: CLIP encoders + temporal encoder + a similarity head. It returns features; losses live elsewhere.

    model = create_model("tiny", head="glccl")
    tokens = model.tokenize(["a dog runs", "a cat sleeps"])  # [2, max_words]
    out = model(tokens, frames, frame_mask)  # dict of features, masks and logit_scale
    score, parts = model.score(out["sentence"], out["words"], out["word_mask"], out["frames"], out["frame_mask"])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from glccl.encoders import clip as clip_enc
from glccl.encoders.clip import list_presets, preset_image_size
from glccl.encoders.temporal import TemporalTransformer
from glccl.encoders.weights import load_pretrained

__all__ = ["GLCCL", "create_model", "create_model_from_config", "list_presets", "preset_image_size"]


class GLCCL(nn.Module):
    """Text-video retrieval model: CLIP text/frame features, seqTransf temporal encoder, a similarity head.

    Build it with :func:`create_model`. Attributes: ``clip`` (open_clip ``CLIP``), ``temporal``, ``head``,
    ``logit_scale`` (CLIP's, ln of the scale; OpenAI weights store ln 100), ``embed_dim``, ``image_size``,
    ``max_words``, ``num_frames``, ``preset``, ``mask_padding``.
    """

    def __init__(self, clip: nn.Module, temporal: nn.Module, head: nn.Module, *, preset: str, max_words: int,
                 num_frames: int, mask_padding: bool = True):
        super().__init__()
        self.clip = clip
        self.temporal = temporal
        self.head = head
        self.preset = preset
        self.max_words = max_words
        self.num_frames = num_frames
        self.mask_padding = mask_padding
        self.embed_dim = clip_enc.embed_dim(clip)
        self.image_size = clip_enc.image_size(clip)

    @property
    def logit_scale(self) -> nn.Parameter:
        """ln of the similarity scale λ (a CLIP parameter, trained at the CLIP learning rate); clamp to ln 100."""
        return self.clip.logit_scale

    # -- text ---------------------------------------------------------------------------------------------------------

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """LongTensor ``[B, max_words]``: SOT + BPE + EOT, zero padded."""
        from glccl.tokenizer import tokenize

        return tokenize(texts, self.max_words)

    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens ``[B, L]`` -> sentence ``[B, D]``, words ``[B, L, D]``, word_mask ``[B, L]`` bool."""
        return clip_enc.encode_text(self.clip, tokens)

    # -- video --------------------------------------------------------------------------------------------------------

    def encode_frames(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """CLIP-only per-frame features ``[B, K, D]`` (cacheable: the temporal encoder is not applied).

        frames: ``[B, K, 3, H, W]`` uint8 0-255 or float already normalised.
        """
        return clip_enc.encode_frames(self.clip, frames, frame_mask)[0]

    def temporal_encode(self, frame_feats: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Temporal encoder over (possibly cached) CLIP frame features ``[B, K, D]`` -> ``[B, K, D]``."""
        return self.temporal(frame_feats, frame_mask)

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP + temporal: video features ``[B, K, D]`` and frame_mask ``[B, K]`` bool (all True when None).

        ``frames``: pixels ``[B, K, 3, H, W]``, or per-frame CLIP features ``[B, K, D]`` computed beforehand by this
        model's frame tower (a feature cache): only the temporal encoder then runs.
        """
        if frames.dim() == 3:
            if frames.shape[-1] != self.embed_dim:
                raise ValueError(f"frame features must be [B, K, {self.embed_dim}], got {tuple(frames.shape)}")
            feats = frames.float()
            if frame_mask is None:
                frame_mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
            frame_mask = frame_mask.bool()
        else:
            feats, frame_mask = clip_enc.encode_frames(self.clip, frames, frame_mask)
        return self.temporal(feats, frame_mask), frame_mask

    # -- both ---------------------------------------------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """Features for a batch; never computes a loss.

        Returns:
            dict with sentence ``[Bt, D]``, words ``[Bt, L, D]``, word_mask ``[Bt, L]``, frames ``[Bv, K, D]``
            (after the temporal encoder), frame_mask ``[Bv, K]`` and logit_scale: the parameter itself, ln λ (unlike
            open_clip's ``CLIP.forward``, which returns λ); ``glccl.losses.RetrievalLoss`` exponentiates and clamps it.
        """
        sentence, words, word_mask = self.encode_text(tokens)
        video, frame_mask = self.encode_video(frames, frame_mask)
        return {"sentence": sentence, "words": words, "word_mask": word_mask, "frames": video,
                "frame_mask": frame_mask, "logit_scale": self.clip.logit_scale}

    def score(self, sentence: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor, frames: torch.Tensor,
              frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head scores for every text x video pair: score ``[Bt, Bv]``, parts ``[Bt, Bv, P]``.

        The masks are the real ones; the head treats padding by its ``mask_padding`` (False: as its release does).
        """
        return self.head(sentence, words, word_mask, frames, frame_mask)

    # -- optimisation helpers -------------------------------------------------------------------------------------------

    def clip_parameters(self) -> list[nn.Parameter]:
        """CLIP parameters, logit_scale included (trained at lr x coef_lr)."""
        return list(self.clip.parameters())

    def non_clip_parameters(self) -> list[nn.Parameter]:
        """Temporal encoder and head parameters (trained at lr)."""
        clip_ids = {id(p) for p in self.clip.parameters()}
        return [p for p in self.parameters() if id(p) not in clip_ids]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.clip.set_grad_checkpointing(enable)
        self.temporal.set_grad_checkpointing(enable)


def create_model(preset: str = "tiny", pretrained: str | None = None, head: str = "glccl", num_frames: int = 12,
                 max_words: int = 32, temporal_layers: int = 4, grad_checkpointing: bool = False,
                 mask_padding: bool = True, logit_scale_init: float | None = None, freeze_token_embedding: bool = False,
                 head_args: dict | None = None) -> GLCCL:
    """Build a :class:`GLCCL`.

    Args:
        preset: encoder preset (:func:`glccl.encoders.list_presets`).
        pretrained: CLIP weights: a local file or a hub tag (only tags touch the network); None = random init.
        head: similarity head name (``glccl.heads.list_heads()``).
        num_frames: K, frames per video.
        max_words: Nw, tokens per caption.
        temporal_layers: seqTransf depth (0: none). Initialised from the CLIP text transformer (after loading weights).
        grad_checkpointing: recompute CLIP and temporal blocks in backward.
        mask_padding: the head masks padded words/frames (False: it treats padding as its release does).
        logit_scale_init: initial similarity scale λ (after loading weights); None keeps CLIP's.
        freeze_token_embedding: keep CLIP's token embedding fixed (``requires_grad=False``).
        head_args: the head's hyperparameters (``head.hyperparameters()``), e.g. ``{"temperature": 3.0}``.

    Raises:
        ValueError: unknown preset/head/hyperparameter, inconsistent sizes; ``WeightsError`` for unusable weights.
    """
    p = clip_enc.get_preset(preset)
    clip = clip_enc.build_clip(preset)
    if max_words > clip.positional_embedding.shape[0]:
        raise ValueError(f"max_words={max_words} exceeds the text context length {clip.positional_embedding.shape[0]}")
    if pretrained:
        load_pretrained(clip, pretrained, model_name=p.open_clip_name)
    from glccl.heads import build_head  # lazy: the heads package is independent of the encoders

    dim = clip_enc.embed_dim(clip)
    head_module = build_head(head, num_words=max_words, num_frames=num_frames, dim=dim, mask_padding=mask_padding,
                             **(head_args or {}))
    if not head_module.uses_temporal:
        temporal_layers = 0  # e.g. meanp: CLIP4Clip mean pooling of the CLIP frame features
    temporal = TemporalTransformer.from_clip(clip, layers=temporal_layers, max_positions=max(77, num_frames))
    model = GLCCL(clip, temporal, head_module, preset=preset, max_words=max_words, num_frames=num_frames,
                  mask_padding=mask_padding)
    if logit_scale_init is not None:
        if not logit_scale_init > 0:
            raise ValueError(f"logit_scale_init must be > 0 (the scale, not its log), got {logit_scale_init}")
        with torch.no_grad():
            model.logit_scale.fill_(math.log(logit_scale_init))
    if freeze_token_embedding:
        model.clip.token_embedding.requires_grad_(False)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def create_model_from_config(cfg) -> GLCCL:
    """Build from a :class:`glccl.config.ModelConfig` (``sim_chunk`` is a scoring setting, not a model one)."""
    return create_model(preset=cfg.preset, pretrained=cfg.pretrained, head=cfg.head, num_frames=cfg.num_frames,
                        max_words=cfg.max_words, temporal_layers=cfg.temporal_layers,
                        grad_checkpointing=cfg.grad_checkpointing, mask_padding=cfg.mask_padding,
                        logit_scale_init=cfg.logit_scale_init, freeze_token_embedding=cfg.freeze_token_embedding,
                        head_args=dict(cfg.head_args))
