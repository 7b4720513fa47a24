"""The tiny network's size against a training step's time: patch size and U-Net widths.

Builds the image-mode backbone stage (``configs/tiny/backbone_image.yaml``, four fifths of the
quickstart's time) with the tiny preset's U-Net at each variant below, draws a few batches once
and times the same optimisation step on them, side by side in one run; prints seconds per step,
the ratio to the first variant and the denoiser's parameters. Every variant has one
convolution-only block per level above its lowest, where the attention, audio, Emotion MoE and
temporal layers sit (attention at high resolution is what costs on a CPU). What each variant
draws is in ``benchmarks/README.md`` (a whole quickstart per variant, ~40-120 min).
Needs SynthEmo shards (``python -m moee quickstart`` writes them).

    python benchmarks/bench_tiny_widths.py [--steps 4]
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_stage_step import stage_step  # noqa: E402
from jsonargparse import CLI  # noqa: E402
from timing import median_time  # noqa: E402

from moee.models import pretrained  # noqa: E402

VARIANTS: dict[str, tuple[int, tuple[int, ...]]] = {
    "patch 2, widths (32, 64, 128), attention at 8x8": (2, (32, 64, 128)),
    "patch 4, widths (48, 96, 128), attention at 4x4": (4, (48, 96, 128)),
    "patch 4, widths (64, 128, 128), attention at 4x4": (4, (64, 128, 128)),
}
"""name -> (patch size of the lossless first stage on 64 px frames, U-Net block widths)."""


def architecture(patch: int, widths: tuple[int, ...]) -> pretrained.Architecture:
    """The tiny preset with another patch size and U-Net widths (attention at the lowest
    level only)."""
    tiny = pretrained.PRESETS["tiny"]
    plain = len(widths) - 1
    unet = {**tiny.unet, "sample_size": tiny.vae["sample_size"] // patch,
            "in_channels": 3 * patch**2, "out_channels": 3 * patch**2,
            "block_out_channels": widths,
            "down_block_types": ("DownBlock2D",) * plain + ("CrossAttnDownBlock2D",),
            "up_block_types": ("CrossAttnUpBlock2D",) + ("UpBlock2D",) * plain}
    return dataclasses.replace(tiny, unet=unet, patch_size=patch, motion_adapter={
        **tiny.motion_adapter, "block_out_channels": widths})


def main(stage: str = "configs/tiny/backbone_image.yaml", steps: int = 4) -> None:
    """Print seconds per training step for each variant of the tiny network.

    Args:
        stage: a stage config of the tiny preset.
        steps: timed steps per variant (median reported), after one warm-up step.
    """
    tiny, batches, first = pretrained.PRESETS["tiny"], None, None
    try:
        for name, (patch, widths) in VARIANTS.items():
            pretrained.PRESETS["tiny"] = architecture(patch, widths)
            torch.manual_seed(0)
            step, batches, module = stage_step(stage, False, batches)
            seconds = median_time(step, steps)
            first = first or seconds
            denoiser = sum(p.numel() for p in module.net.denoiser.parameters())
            print(f"{name}: {seconds:.2f} s/step ({seconds / first:.2f}x), denoiser "
                  f"{denoiser / 1e6:.1f} M parameters", flush=True)
    finally:
        pretrained.PRESETS["tiny"] = tiny
    print(f"({stage}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    CLI(main)
