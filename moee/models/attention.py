"""MoEE's attention in the denoiser: the per-call :class:`DenoiserContext` and what reads it.

* :class:`MoEEAttnProcessor`, the attention processor of every U-Net attention layer: spatial
  self-attention (``attn1``) also attends to the ReferenceNet's features of the same block;
  ``attn2`` is diffusers' cross-attention to the reference image embedding.
* :class:`AudioAttention`, the cross-attention from each frame's tokens to its audio tokens.

Per-call conditioning travels in one :class:`DenoiserContext` passed as
``cross_attention_kwargs={"moee": ctx}``: diffusers hands it to every processor and to every
block call (also under gradient checkpointing, which recomputes with the same arguments).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from einops import rearrange
from torch import nn

CONTEXT_KEY = "moee"
"""Key of the :class:`DenoiserContext` in ``cross_attention_kwargs``."""


@dataclass
class DenoiserContext:
    """Conditioning of one denoiser call, read by the processors and block hooks.

    Attributes:
        num_frames: frames ``f`` per sample (the U-Net batch is ``b * f``).
        reference: block name -> ReferenceNet features (b r n d), ``r`` = 1 + motion frames.
        reference_keep: (b,) bool, samples that see the reference (``False``: dropped for CFG).
        reference_latent: (b c h w) the reference latent, concatenated to every noisy frame's
            channels by a denoiser with ``concat_reference`` (zeros where it is dropped).
        audio: audio tokens (b f t c) or ``None`` (audio attention skipped).
        emotion: emotion latents (b m c) or ``None`` (Emotion MoE skipped).
        emotion_keep: (b,) bool, samples that go through the Emotion MoE (``False``: its
            emotion is dropped for classifier-free guidance, the experts' branch is left out).
        expert: single-expert path of the Emotion MoE (int or (b,) LongTensor).
        weights: (b e) explicit expert mixture replacing the global gate.
        image_mode: still images: temporal layers are skipped (stage-1 image training); audio
            attention still runs when ``audio`` is given (one frame's tokens per still).
    """

    num_frames: int
    reference: dict[str, torch.Tensor] | None = None
    reference_keep: torch.Tensor | None = None
    reference_latent: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    emotion: torch.Tensor | None = None
    emotion_keep: torch.Tensor | None = None
    expert: int | torch.Tensor | None = None
    weights: torch.Tensor | None = None
    image_mode: bool = False

    def per_frame(self, value: torch.Tensor) -> torch.Tensor:
        """Repeat a per-sample tensor (b ...) over frames: ((b f) ...)."""
        return value.repeat_interleave(self.num_frames, 0)


def transformer_block_names(unet: UNet2DConditionModel) -> list[str]:
    """Names of the U-Net's spatial transformer blocks, in the order the forward runs them."""
    stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    names = [n for n, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]
    return sorted(names, key=lambda n: stage[n.split(".")[0]])  # stable within a stage


class MoEEAttnProcessor:
    """SDPA attention that, for self-attention, also attends to the ReferenceNet's features.

    Keys/values of block ``name`` are ``[x, reference features of every reference frame]``;
    samples with ``reference_keep == False`` mask the reference tokens out. Cross-attention and
    calls without a context behave like diffusers' ``AttnProcessor2_0``.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        moee: DenoiserContext | None = None,
    ) -> torch.Tensor:
        """hidden_states ((b f) n d) -> ((b f) n d)."""
        context, mask = encoder_hidden_states, attention_mask
        if context is None:
            context = hidden_states
            reference = {} if moee is None or moee.reference is None else moee.reference
            if self.name in reference:
                feats = moee.per_frame(rearrange(reference[self.name], "b r n d -> b (r n) d"))
                context = torch.cat([hidden_states, feats.to(hidden_states.dtype)], 1)
                if moee.reference_keep is not None:
                    keep = moee.per_frame(moee.reference_keep.bool())  # (b f)
                    own = torch.ones_like(keep[:, None]).expand(-1, hidden_states.shape[1])
                    mask = torch.cat([own, keep[:, None].expand(-1, feats.shape[1])], 1)
                    mask = rearrange(mask, "bf k -> bf 1 1 k")
        q = attn.to_q(hidden_states)
        k, v = attn.to_k(context), attn.to_v(context)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = attn.to_out[0](rearrange(out, "b h n d -> b n (h d)"))
        return attn.to_out[1](out)


class AudioAttention(nn.Module):
    """Pre-norm cross-attention from the frame's tokens to its audio tokens (residual branch).

    The output projection starts at zero, so a new layer starts as the identity.
    """

    def __init__(self, dim: int, audio_dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(
            dim, cross_attention_dim=audio_dim, heads=heads, dim_head=dim // heads
        )
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """x ((b f) n d), audio ((b f) t c) -> ((b f) n d)."""
        return x + self.attn(self.norm(x), encoder_hidden_states=audio)
