"""ReferenceNet: a U-Net of the denoiser's layout that encodes the reference portrait once.

It runs diffusers' ``UNet2DConditionModel`` at timestep 0 on the reference latent (and on the
motion-frame latents, the last frames of the previous clip) and records, through its attention
processors (:class:`ReferenceRecorder`), the normed hidden states entering every block's
self-attention. The denoiser's self-attention of the same block attends to them (see
:class:`moee.models.attention.MoEEAttnProcessor`). Compute the features once per clip with
:meth:`ReferenceNet.forward` and reuse them at every denoising step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from einops import rearrange, repeat
from torch import nn

from moee.models.attention import MoEEAttnProcessor, transformer_block_names


class FeaturesComplete(Exception):
    """Raised by the last :class:`ReferenceRecorder` once every feature is stored: the rest of
    the ReferenceNet's forward (its higher-resolution up blocks, the output convolution) cannot
    change them, and is not computed."""


class ReferenceRecorder:
    """ReferenceNet self-attention processor: stores its input (the normed hidden states entering
    ``attn1``) under the block name in ``store``, then attends like ``AttnProcessor2_0``.

    The recorder of the last block (``last=True``) raises :class:`FeaturesComplete` instead of
    attending, the first time it stores (a gradient-checkpointing recomputation, which finds
    its feature already stored, runs through).
    """

    def __init__(self, name: str, last: bool = False) -> None:
        self.name = name
        self.last = last
        self.attend = MoEEAttnProcessor(name)

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        store: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """hidden_states (b n d) -> (b n d); records ``hidden_states`` when it is self-attention."""
        if store is not None and encoder_hidden_states is None:
            first = self.name not in store
            store[self.name] = hidden_states
            if self.last and first:
                raise FeaturesComplete
        return self.attend(attn, hidden_states, encoder_hidden_states, attention_mask)


@dataclass
class ReferenceFeatures:
    """Everything the denoiser needs from the reference, computed once per clip.

    Attributes:
        features: block name -> (b r n d), ``r`` = 1 reference + motion frames.
        image_embeds: reference image embedding for cross-attention (b k D).
        latent: the reference latent (b c h w), which a denoiser built with
            ``concat_reference`` also takes beside every noisy frame.
    """

    features: dict[str, torch.Tensor]
    image_embeds: torch.Tensor
    latent: torch.Tensor | None = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ReferenceFeatures:
        """The features with ``fn`` applied to every per-sample tensor (batch first)."""
        return ReferenceFeatures({k: fn(v) for k, v in self.features.items()},
                                 fn(self.image_embeds),
                                 None if self.latent is None else fn(self.latent))

    def repeat(self, times: int) -> ReferenceFeatures:
        """The same features for ``times`` copies of the batch (e.g. guidance branches)."""
        return self.map(lambda v: v.repeat(times, *(1,) * (v.dim() - 1)))


class ReferenceNet(nn.Module):
    """Wraps a ``UNet2DConditionModel`` whose self-attention inputs become reference features.

    Its forward stops once the last block's feature is stored (:class:`FeaturesComplete`): in
    the tiny preset, whose attention is only at 8x8, that skips the 16x16 and 32x32 up blocks,
    the costliest part of the U-Net.

    Parameters after the last recorded feature (``conv_norm_out``, ``conv_out``, the rest of the
    last transformer block, ...) never influence the output; :meth:`unused_parameter_names`
    lists them so that training can freeze them (they still load from SD-1.5 weights).
    """

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet
        self.block_names = transformer_block_names(unet)
        processors = {}
        for name in unet.attn_processors:
            block = name.rsplit(".attn", 1)[0]
            processors[name] = ReferenceRecorder(block, last=block == self.block_names[-1])
        unet.set_attn_processor(dict(processors))

    def unused_parameter_names(self) -> list[str]:
        """Names (relative to this module) of parameters that cannot affect the features.

        Everything computed after the ``norm1`` of the last transformer block is dead: the rest
        of that block, its ``proj_out``, later layers of the U-Net and the output convolution.
        """
        last = self.block_names[-1]
        attention = last.rsplit(".transformer_blocks", 1)[0]  # e.g. up_blocks.3.attentions.2
        parts = attention.split(".")
        up_block = int(parts[1]) if parts[0] == "up_blocks" else -1
        layer = int(parts[3]) if parts[0] == "up_blocks" else -1

        def dead(name: str) -> bool:
            if name.startswith((f"{last}.norm1.", f"{last}.pos_embed.")):
                return False
            tail = (f"{last}.", f"{attention}.proj_out.", "conv_norm_out.", "conv_out.")
            if name.startswith(tail):
                return True
            if not name.startswith("up_blocks."):
                return False
            block, kind, index = name.split(".")[1:4]
            if int(block) != up_block:
                return int(block) > up_block
            return kind == "upsamplers" or int(index) > layer

        return [f"unet.{n}" for n, _ in self.unet.named_parameters() if dead(n)]

    def forward(
        self,
        latent: torch.Tensor,
        image_embeds: torch.Tensor,
        motion_latents: torch.Tensor | None = None,
    ) -> ReferenceFeatures:
        """latent (b c h w), image_embeds (b k D), motion_latents (b r c h w) -> features."""
        frames = (
            latent[:, None]
            if motion_latents is None
            else torch.cat([latent[:, None], motion_latents], 1)
        )
        b, r = frames.shape[:2]
        store: dict[str, torch.Tensor] = {}
        try:  # stops at the last recorded block: nothing after it reaches the features
            self.unet(
                rearrange(frames, "b r c h w -> (b r) c h w"),
                torch.zeros(b * r, dtype=torch.long, device=latent.device),
                encoder_hidden_states=repeat(image_embeds, "b k d -> (b r) k d", r=r),
                cross_attention_kwargs={"store": store},
            )
        except FeaturesComplete:
            pass
        features = {k: rearrange(v, "(b r) n d -> b r n d", b=b) for k, v in store.items()}
        return ReferenceFeatures(features, image_embeds, latent)
