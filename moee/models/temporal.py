"""Temporal attention across a clip's frames: AnimateDiff's motion module on block tokens."""

from __future__ import annotations

import torch
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from einops import rearrange
from torch import nn


class TemporalAttention(nn.Module):
    """AnimateDiff motion module (diffusers' ``AnimateDiffTransformer3D``) on block tokens.

    Constructed with ``MotionAdapter``'s settings, so a motion adapter's module loads into
    :attr:`module` unchanged. ``proj_out`` starts at zero (identity at the start of training).
    """

    def __init__(self, dim: int, heads: int = 8, norm_groups: int = 32, max_frames: int = 32):
        super().__init__()
        self.module = AnimateDiffTransformer3D(
            num_attention_heads=heads,
            attention_head_dim=dim // heads,
            in_channels=dim,
            norm_num_groups=norm_groups,
            activation_fn="geglu",
            attention_bias=False,
            positional_embeddings="sinusoidal",
            num_positional_embeddings=max_frames,
        )
        nn.init.zeros_(self.module.proj_out.weight)
        nn.init.zeros_(self.module.proj_out.bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x ((b f) n d) -> ((b f) n d); attention runs along f for every token."""
        grid = rearrange(x, "bf n d -> bf d n 1")
        return rearrange(self.module(grid, num_frames=num_frames), "bf d n 1 -> bf n d")
