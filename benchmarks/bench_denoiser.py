"""Denoiser training step (forward + backward) vs diffusers' own U-Nets of the same widths.

Times, side by side in one run, one training step of:

* diffusers ``UNet2DConditionModel`` built from the preset's config (spatial layers only),
* diffusers ``UNetMotionModel`` = that U-Net + an AnimateDiff ``MotionAdapter`` of the preset,
* MoEE's :class:`~moee.models.unet.Denoiser` (the same diffusers U-Net with block hooks), adding
  one part at a time: spatial only, + temporal attention, + ReferenceNet K/V, + audio
  attention, + the gated six-expert Emotion MoE (the full stage-3 model); and the full model on
  the single-expert path (stage 2).

Ratios are against the diffusers model with the same layers (spatial: ``UNet2DConditionModel``;
everything else: ``UNetMotionModel``). The design's goal: the full denoiser within 1.3x of
``UNetMotionModel``. Random weights; inputs are random tensors of the training shapes.

    python benchmarks/bench_denoiser.py [--preset tiny] [--batch 4] [--frames 8] [--repeats 5]
"""

from __future__ import annotations

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from jsonargparse import CLI
from timing import median_time

from moee.models.attention import DenoiserContext
from moee.models.moee_net import MoEENet, MoEENetConfig
from moee.models.pretrained import PRESETS, Preset


def training_step(module: torch.nn.Module, forward):
    """forward() -> output; backward of its mean, gradients cleared first."""

    def step():
        module.zero_grad(set_to_none=True)
        forward().float().square().mean().backward()

    return step


def main(preset: Preset = "tiny", batch: int = 4, frames: int = 8, size: int | None = None,
         repeats: int = 5, threads: int | None = None) -> None:
    """Print seconds per training step and ratios to the diffusers baselines.

    Args:
        preset: ``tiny`` (CPU) or ``sd15`` (GPU-sized; slow on a CPU).
        batch: samples per step.
        frames: frames per sample.
        size: latent side (default: the preset U-Net's ``sample_size``).
        repeats: timed steps per variant (median reported).
        threads: torch CPU threads (default: torch's choice).
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    arch = PRESETS[preset]
    side = size or arch.unet["sample_size"]
    net = MoEENet(MoEENetConfig(preset=preset)).train()
    denoiser = net.denoiser
    b, f, c = batch, frames, arch.unet["in_channels"]
    latents = torch.randn(b, f, c, side, side)
    timesteps = torch.randint(0, 1000, (b,))
    with torch.no_grad():
        reference = net.encode_reference(
            torch.rand(b, 3, side * net.vae.downsample, side * net.vae.downsample) * 2 - 1,
            torch.randn(b, 2, c, side, side))
        audio = net.encode_audio(torch.randn(b, (f + 4) * 640) * 0.1)
    moe = next(iter(denoiser.blocks.values())).emotion
    emotion = torch.randn(b, arch.emotion_tokens, moe.sizes["context_dim"])
    embeds = reference.image_embeds

    def ours(**parts):
        ctx = DenoiserContext(num_frames=f, **parts)
        return lambda: denoiser(latents, timesteps, embeds, ctx)

    full = dict(reference=reference.features, audio=audio, emotion=emotion)
    variants = {
        "ours: spatial only": ("unet2d", ours(image_mode=True)),
        "ours: + temporal": ("motion", ours()),
        "ours: + reference K/V": ("motion", ours(reference=reference.features)),
        "ours: + audio attention": ("motion", ours(reference=reference.features, audio=audio)),
        "ours: + emotion MoE (full)": ("motion", ours(**full)),
        "ours: full, single expert": ("motion", ours(**full, expert=3)),
    }
    unet2d = UNet2DConditionModel(**arch.unet).train()
    adapter = MotionAdapter(**arch.motion_adapter,
                            motion_layers_per_block=arch.unet["layers_per_block"],
                            motion_num_attention_heads=arch.unet["attention_head_dim"])
    motion = UNetMotionModel.from_unet2d(unet2d, adapter).train()
    flat_latents = latents.flatten(0, 1)
    flat_t = timesteps.repeat_interleave(f)
    flat_embeds = embeds.repeat_interleave(f, 0)
    baselines = {
        "unet2d": ("diffusers UNet2DConditionModel", unet2d,
                   lambda: unet2d(flat_latents, flat_t, flat_embeds).sample),
        "motion": ("diffusers UNetMotionModel", motion,
                   lambda: motion(latents.transpose(1, 2), timesteps, flat_embeds).sample),
    }
    print(f"{preset}: batch {b} x {f} frames, {side}x{side} latents, "
          f"{torch.get_num_threads()} threads, median of {repeats} fwd+bwd steps")
    base_times = {}
    for key, (name, module, forward) in baselines.items():
        base_times[key] = median_time(training_step(module, forward), repeats)
        print(f"{name:34} {base_times[key]:8.3f} s")
    for name, (against, forward) in variants.items():
        seconds = median_time(training_step(denoiser, forward), repeats)
        print(f"{name:34} {seconds:8.3f} s  {seconds / base_times[against]:5.2f}x "
              f"{baselines[against][0].split()[1]}")


if __name__ == "__main__":
    CLI(main)
