"""The denoising U-Net on video latents, composed around diffusers' own ``UNet2DConditionModel``.

Frames are folded into the batch, ``(b f) c h w``. Every ``BasicTransformerBlock`` of the U-Net
keeps its own forward; MoEE adds behaviour through two explicit seams:

* attention processors (``set_attn_processor``, :mod:`moee.models.attention`): spatial
  self-attention (``attn1``) also attends to the ReferenceNet's features of the same block
  (reference image and motion frames); ``attn2`` is diffusers' cross-attention to the reference
  image embedding;
* a forward hook on each transformer block that applies, to its output and in this order, audio
  cross-attention to the frame's audio tokens, the Emotion MoE and temporal self-attention across
  frames (diffusers' AnimateDiff motion-module class, so AnimateDiff weights load by key mapping;
  :mod:`moee.models.temporal`).

Per-call conditioning travels in one :class:`~moee.models.attention.DenoiserContext` passed as
``cross_attention_kwargs={"moee": ctx}``: diffusers hands it to every processor and to every
block call (also under gradient checkpointing, which recomputes with the same arguments).
The U-Net's ``state_dict`` stays exactly SD-1.5's; the new modules live in :attr:`blocks`.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from einops import rearrange, repeat
from torch import nn

from moee.models.attention import (
    CONTEXT_KEY,
    AudioAttention,
    DenoiserContext,
    MoEEAttnProcessor,
    transformer_block_names,
)
from moee.models.emotion_moe import EmotionMoE
from moee.models.temporal import TemporalAttention

_BLOCK_SIGNATURE = inspect.signature(BasicTransformerBlock.forward)


class BlockExtras(nn.Module):
    """What MoEE adds after one spatial transformer block: audio attention, Emotion MoE, temporal
    attention (each skipped when its input is absent or in image mode)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        audio_dim: int,
        emotion_dim: int,
        moe_heads: int,
        fused_moe: bool = True,
        temporal_groups: int = 32,
        max_frames: int = 32,
    ) -> None:
        super().__init__()
        self.audio = AudioAttention(dim, audio_dim, heads)
        self.emotion = EmotionMoE(dim, emotion_dim, heads=moe_heads, fused=fused_moe)
        self.temporal = TemporalAttention(dim, heads, temporal_groups, max_frames)

    def forward(self, x: torch.Tensor, ctx: DenoiserContext) -> torch.Tensor:
        """x ((b f) n d) -> ((b f) n d)."""
        if ctx.audio is not None:
            x = self.audio(x, rearrange(ctx.audio, "b f t c -> (b f) t c").to(x.dtype))
        if ctx.emotion is not None:
            weights = None if ctx.weights is None else ctx.per_frame(ctx.weights)
            expert = ctx.expert
            if isinstance(expert, torch.Tensor):
                expert = ctx.per_frame(expert)
            mixed = self.emotion(x, ctx.emotion.to(x.dtype), expert, weights)  # shared by frames
            if ctx.emotion_keep is None:
                x = mixed
            else:
                x = torch.where(ctx.per_frame(ctx.emotion_keep.bool())[:, None, None], mixed, x)
        if not ctx.image_mode and ctx.num_frames > 1:
            x = self.temporal(x, ctx.num_frames)
        return x


def _widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> None:
    """Give ``unet.conv_in`` ``in_channels`` inputs; the new ones start with zero weights."""
    old = unet.conv_in
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)


def _extras_key(block_name: str) -> str:
    return block_name.replace(".", "__")


class _ExtrasHook:
    """Forward hook of one transformer block: runs its :class:`BlockExtras` on the output.

    A callable object rather than a closure, so that ``copy.deepcopy`` of the denoiser (EMA
    copies) rebinds the hook to the copy's own extras.
    """

    def __init__(self, extras: BlockExtras) -> None:
        self.extras = extras

    def __call__(self, block, args, kwargs, output):
        bound = _BLOCK_SIGNATURE.bind(block, *args, **kwargs)
        ctx = (bound.arguments.get("cross_attention_kwargs") or {}).get(CONTEXT_KEY)
        return output if ctx is None else self.extras(output, ctx)


class Denoiser(nn.Module):
    """Video denoiser: a diffusers ``UNet2DConditionModel`` plus per-block :class:`BlockExtras`.

    Args:
        unet: the spatial U-Net (SD-1.5 layout in the real config); kept as diffusers built it.
        audio_dim: width of the audio tokens.
        emotion_dim: width of the emotion latents.
        moe_heads: attention heads of each emotion expert.
        fused_moe: run the experts fused (see :class:`EmotionMoE`).
        temporal_groups: GroupNorm groups of the motion modules.
        max_frames: longest clip the motion modules' positional embedding covers.
        concat_reference: also feed the reference latent, channel-concatenated to each noisy
            frame (InstructPix2Pix-style): ``conv_in`` is widened, its new input channels
            zero-initialised, so pretrained weights start unchanged. A pixel-aligned identity
            path beside the ReferenceNet's attention, which small models learn much faster.
        reference_skip: add the reference latent to the U-Net's output (which starts at zero:
            ``conv_out`` is zero-initialised). Under the clean-latent (x0) objective the
            network then predicts how the frame differs from the portrait (expression, mouth,
            pose) instead of redrawing the whole face, and an untrained one already predicts
            the portrait. Needs ``concat_reference``; dropping the reference drops it here too.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        audio_dim: int,
        emotion_dim: int,
        moe_heads: int = 8,
        fused_moe: bool = True,
        temporal_groups: int = 32,
        max_frames: int = 32,
        concat_reference: bool = False,
        reference_skip: bool = False,
    ) -> None:
        super().__init__()
        if reference_skip and not concat_reference:
            raise ValueError("reference_skip needs concat_reference (the pixel-aligned "
                             "reference latent)")
        self.unet = unet
        self.concat_reference = concat_reference
        self.reference_skip = reference_skip
        if concat_reference:
            _widen_conv_in(unet, 2 * unet.config.in_channels)
        if reference_skip:
            nn.init.zeros_(unet.conv_out.weight)
            nn.init.zeros_(unet.conv_out.bias)
        self.block_names = transformer_block_names(unet)
        modules = dict(unet.named_modules())
        self.blocks = nn.ModuleDict()
        for name in self.block_names:
            block = modules[name]
            self.blocks[_extras_key(name)] = BlockExtras(
                block.dim,
                block.num_attention_heads,
                audio_dim,
                emotion_dim,
                moe_heads,
                fused_moe,
                temporal_groups,
                max_frames,
            )
            hook = _ExtrasHook(self.blocks[_extras_key(name)])
            block.register_forward_hook(hook, with_kwargs=True)
        processors = {
            name: MoEEAttnProcessor(name.rsplit(".attn", 1)[0]) for name in unet.attn_processors
        }
        unet.set_attn_processor(dict(processors))

    def motion_adapter_key_map(self) -> dict[str, str]:
        """Our temporal module prefix -> the AnimateDiff ``MotionAdapter`` module prefix.

        ``{down,up}_blocks.i.attentions.j`` follows ``motion_modules.j`` of the same U-Net block,
        ``mid_block.attentions.0`` the mid block's. AnimateDiff's modules after resnet-only
        blocks have no transformer block here and are not used.
        """
        mapping = {}
        for name in self.block_names:
            attention, index = name.rsplit(".transformer_blocks.", 1)
            if index != "0":
                continue
            block, _, layer = attention.rsplit(".", 2)
            ours = f"blocks.{_extras_key(name)}.temporal.module"
            mapping[ours] = f"{block}.motion_modules.{layer}"
        return mapping

    def load_motion_adapter(self, adapter_state: dict[str, torch.Tensor]) -> dict[str, int]:
        """Load AnimateDiff motion-module weights (a ``MotionAdapter`` state dict).

        Returns counts: ``loaded`` tensors, ``unused`` adapter tensors, ``missing`` temporal
        tensors left at their initial values.
        """
        state, used = {}, set()
        for ours, theirs in self.motion_adapter_key_map().items():
            for key, value in adapter_state.items():
                if key.startswith(f"{theirs}."):
                    state[f"{ours}.{key[len(theirs) + 1 :]}"] = value
                    used.add(key)
        result = self.load_state_dict(state, strict=False)
        temporal_missing = [k for k in result.missing_keys if ".temporal." in k]
        if result.unexpected_keys:
            raise KeyError(f"motion adapter keys do not fit: {result.unexpected_keys[:5]}")
        return {
            "loaded": len(state),
            "unused": len(adapter_state) - len(used),
            "missing": len(temporal_missing),
        }

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        image_embeds: torch.Tensor,
        ctx: DenoiserContext,
    ) -> torch.Tensor:
        """latents (b f c h w), timesteps (b,), image_embeds (b k D) -> the objective's
        prediction (b f c h w)."""
        b, f = latents.shape[:2]
        if ctx.num_frames != f:
            raise ValueError(f"context is for {ctx.num_frames} frames, latents have {f}")
        reference = None
        if self.concat_reference:
            reference = ctx.reference_latent.to(latents.dtype)
            if ctx.reference_keep is not None:
                reference = reference * ctx.reference_keep.to(reference.dtype)[:, None, None, None]
            reference = repeat(reference, "b c h w -> b f c h w", f=f)
            latents = torch.cat([latents, reference], 2)
        out = self.unet(
            rearrange(latents, "b f c h w -> (b f) c h w"),
            repeat(timesteps, "b -> (b f)", f=f),
            encoder_hidden_states=repeat(image_embeds, "b k d -> (b f) k d", f=f),
            cross_attention_kwargs={CONTEXT_KEY: ctx},
        ).sample
        out = rearrange(out, "(b f) c h w -> b f c h w", b=b)
        return out + reference if self.reference_skip else out
