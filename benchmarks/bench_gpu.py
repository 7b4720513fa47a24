"""GPU inference speed and memory at 512²: float32 vs bf16, channels_last, torch.compile.

For the SD-1.5-shaped network (random weights), prints seconds of compute per second of video
(``s/frame × 25``) at 8 and 40 DPM-Solver++ steps with the three guidance branches batched,
and the peak GPU memory of each variant:

* ``fp32``: float32 weights, SDPA (flash / memory-efficient kernels where the GPU has them);
* ``bf16``: bfloat16 weights and activations;
* ``bf16+cl``: + ``channels_last`` memory format for the convolutions;
* ``bf16+cl+compile``: + ``torch.compile`` of the denoiser's U-Net.

The goal of the design: real time (≤ 1 s per second of video) on one H100 at 512² with
≤ 6 GB. Without CUDA it says so in one line and stops; ``--device cpu --preset tiny`` runs the
same code on a CPU as a smoke test.

    python benchmarks/bench_gpu.py [--clip_frames 16] [--clips 2]
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from jsonargparse import CLI  # noqa: E402

from moee.inference.conditions import EmotionTrack  # noqa: E402
from moee.inference.pipeline import MoEEPipeline  # noqa: E402
from moee.inference.sampling import SamplerSettings  # noqa: E402
from moee.models.moee_net import MoEENet, MoEENetConfig  # noqa: E402
from moee.models.pretrained import Preset  # noqa: E402

VARIANTS = ("fp32", "bf16", "bf16+cl", "bf16+cl+compile")
FPS = 25


def build(variant: str, preset: Preset, device: torch.device) -> MoEENet:
    """The network of one variant on ``device``."""
    net = MoEENet(MoEENetConfig(preset=preset, channels_last="+cl" in variant)).eval()
    net.to(device)
    if variant.startswith("bf16"):
        net.to(torch.bfloat16)
    if variant.endswith("compile"):
        net.denoiser.unet = torch.compile(net.denoiser.unet)
    return net


def seconds_per_frame(pipeline: MoEEPipeline, frames: int, device: torch.device) -> float:
    """Wall time of one ``generate`` call over ``frames`` frames, divided by ``frames``."""
    audio = np.random.default_rng(0).normal(0, 0.1, frames * 640).astype(np.float32)
    reference = torch.rand(3, pipeline.size, pipeline.size) * 2 - 1
    track = EmotionTrack.parse("happily surprised")
    synchronize(device)
    start = time.perf_counter()
    pipeline.generate(reference, audio, track, torch.Generator().manual_seed(0))
    synchronize(device)
    return (time.perf_counter() - start) / frames


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(preset: Preset = "sd15", device: str = "cuda", clip_frames: int = 16, clips: int = 2,
         steps: tuple[int, ...] = (8, 40), variants: tuple[str, ...] = VARIANTS) -> None:
    """Print s per second of video and peak memory per variant and step count.

    Args:
        preset: network shape (``sd15``: 512², ``tiny``: 64², for a CPU smoke run).
        device: ``cuda``, ``cuda:1``, ... or ``cpu``.
        clip_frames: frames per clip.
        clips: clips per measurement (the first call of each variant is a warm-up).
        steps: step counts to time.
        variants: which of fp32, bf16, bf16+cl, bf16+cl+compile.
    """
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here; run on a GPU machine, or pass --device cpu "
                 "--preset tiny for a CPU smoke run")
    name = torch.cuda.get_device_name(target) if target.type == "cuda" else "cpu"
    print(f"{preset} on {name}, torch {torch.__version__}, {clips} clips × {clip_frames} "
          f"frames, 3 guidance branches batched")
    print(f"{'variant':18} {'steps':>5} {'s/frame':>8} {'s per s of video':>17} {'peak GPU':>9}")
    frames = clips * clip_frames
    for variant in variants:
        net = build(variant, preset, target)
        for count in steps:
            settings = SamplerSettings(steps=count, clip_frames=clip_frames)
            pipeline = MoEEPipeline(net, settings, progress=False)
            seconds_per_frame(pipeline, clip_frames, target)  # warm-up (and compilation)
            if target.type == "cuda":
                torch.cuda.reset_peak_memory_stats(target)
            seconds = seconds_per_frame(pipeline, frames, target)
            peak = (torch.cuda.max_memory_allocated(target) / 2**30
                    if target.type == "cuda" else float("nan"))
            print(f"{variant:18} {count:5} {seconds:8.3f} {seconds * FPS:17.2f} "
                  f"{peak:7.2f} G", flush=True)
        del net
        if target.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    CLI(main)
