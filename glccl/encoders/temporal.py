"""Temporal encoder (CLIP4Clip / X-CLIP ``seqTransf``): ``f = TT(f0 + p[:K]) + f0``.

TT is a stack of CLIP-style residual attention blocks of width D (open_clip ``ResidualAttentionBlock``, so the blocks
share the text transformer's parameter names), ``p`` a learned frame position table (``max_positions`` x D). Padded
frames are masked as attention keys. It always runs in fp32, also under autocast. With ``layers=0`` it is the
identity and has no parameters.

"Initialisation trick" (CLIP4Clip ``modules/modeling.py``): :meth:`TemporalTransformer.init_from_clip` copies the CLIP text transformer's
first ``layers`` resblocks into TT and the text positional embedding into ``p``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from glccl import _tv_compat

_tv_compat.ensure_torchvision_importable()  # before open_clip imports torchvision

from open_clip.transformer import QuickGELU, ResidualAttentionBlock  # noqa: E402

# Additive mask value for padded keys: exp(-1e6) is exactly 0 in fp32, and a fully padded video stays finite.
_MASKED = -1e6


class TemporalTransformer(nn.Module):
    """Residual temporal transformer over per-frame CLIP features.

    Args:
        width: feature size D (CLIP embed_dim).
        layers: number of residual attention blocks (0: identity).
        heads: attention heads (use the CLIP text transformer's, so copied blocks compute what they computed there).
        max_positions: rows of the frame position table (>= the number of frames).
        quick_gelu: QuickGELU activations (OpenAI CLIP) instead of GELU.
        grad_checkpointing: recompute each block in backward to save memory.
    """

    def __init__(self, width: int, layers: int = 4, heads: int = 8, max_positions: int = 77, quick_gelu: bool = True,
                 grad_checkpointing: bool = False):
        super().__init__()
        if layers < 0:
            raise ValueError(f"layers must be >= 0, got {layers}")
        if layers and width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.width = width
        self.layers = layers
        self.heads = heads
        self.max_positions = max_positions
        self.grad_checkpointing = grad_checkpointing
        if layers:
            act = QuickGELU if quick_gelu else nn.GELU
            self.position_embedding = nn.Parameter(torch.empty(max_positions, width))
            self.resblocks = nn.ModuleList(
                [ResidualAttentionBlock(width, heads, act_layer=act, batch_first=True) for _ in range(layers)])
        else:
            self.register_parameter("position_embedding", None)
            self.resblocks = nn.ModuleList()
        self.reset_parameters()

    @classmethod
    def from_clip(cls, clip: nn.Module, layers: int = 4, max_positions: int = 77, grad_checkpointing: bool = False,
                  init: bool = True) -> TemporalTransformer:
        """A temporal encoder shaped after ``clip`` (width = embed_dim, text heads and activation), optionally
        initialised from its text transformer (:meth:`init_from_clip`)."""
        proj = clip.text_projection
        width = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]
        block = clip.transformer.resblocks[0]
        heads = block.attn.num_heads
        if width % heads:
            heads = max(1, width // 64)
        quick = isinstance(getattr(block.mlp, "gelu", None), QuickGELU)
        tt = cls(width, layers, heads, max(max_positions, clip.positional_embedding.shape[0]), quick,
                 grad_checkpointing)
        if init and layers:
            tt.init_from_clip(clip)
        return tt

    def reset_parameters(self) -> None:
        """Random init (X-CLIP style): N(0, 0.02) weights and position table, zero biases, unit LayerNorms."""
        if not self.layers:
            return
        nn.init.normal_(self.position_embedding, std=0.02)
        for blk in self.resblocks:
            for name, p in blk.named_parameters():
                if name.startswith("ln_"):
                    nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, std=0.02)

    @torch.no_grad()
    def init_from_clip(self, clip: nn.Module) -> list[str]:
        """Copy the CLIP text transformer's first resblocks and positional embedding; returns the copied names.

        Blocks beyond the text transformer's depth, or blocks whose shapes differ (text width != embed_dim), keep
        their random init.
        """
        copied: list[str] = []
        if not self.layers:
            return copied
        text_blocks = clip.transformer.resblocks
        for i, blk in enumerate(self.resblocks):
            if i >= len(text_blocks):
                break
            src = text_blocks[i].state_dict()
            dst = blk.state_dict()
            if src.keys() != dst.keys() or any(src[k].shape != dst[k].shape for k in dst):
                continue
            blk.load_state_dict(src)
            copied.append(f"resblocks.{i}")
        pos = clip.positional_embedding
        if pos.shape[1] == self.width:
            n = min(pos.shape[0], self.max_positions)
            self.position_embedding[:n].copy_(pos[:n].float())
            copied.append("position_embedding")
        return copied

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            x: per-frame features ``[B, K, D]``.
            frame_mask: bool ``[B, K]`` (True = real frame); padded frames are not attended to. None: all real.

        Returns:
            ``[B, K, D]`` fp32.
        """
        if not self.layers:
            return x
        b, k, d = x.shape
        if k > self.max_positions:
            raise ValueError(f"{k} frames exceed the temporal position table ({self.max_positions})")
        with torch.autocast(device_type=x.device.type, enabled=False):
            f0 = x.float()
            h = f0 + self.position_embedding[:k].unsqueeze(0)
            attn_mask = None
            if frame_mask is not None:
                keys = torch.zeros(b, 1, k, device=x.device, dtype=torch.float32)
                keys = keys.masked_fill(~frame_mask.bool().view(b, 1, k), _MASKED)
                # nn.MultiheadAttention wants a per-(batch, head) mask [B*H, K, K], batch-major.
                attn_mask = keys.expand(b, k, k).repeat_interleave(self.heads, dim=0)
            for blk in self.resblocks:
                if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                    h = checkpoint(blk, h, None, None, attn_mask, use_reentrant=False)
                else:
                    h = blk(h, attn_mask=attn_mask)
            return h + f0
