"""GPU speed and memory at 512²: inference in float32 vs bf16, channels_last, torch.compile;
and the training step of the paper-scale stages in bf16 autocast.

For the SD-1.5-shaped network (random weights), prints:

* **inference**: seconds of compute per second of video (``s/frame × 25``) at 8 and 40
  DPM-Solver++ steps with the three guidance branches batched, and the peak GPU memory, for

  * ``fp32``: float32 weights, SDPA (flash / memory-efficient kernels where the GPU has them);
  * ``bf16``: bfloat16 weights and activations;
  * ``bf16+cl``: + ``channels_last`` memory format for the convolutions;
  * ``bf16+cl+compile``: + ``torch.compile`` of the denoiser's U-Net;

* **training**: seconds per optimisation step (forward, loss with the pixel and perceptual
  terms, backward, AdamW) and peak GPU memory of the backbone's video stage (batch 1,
  ``train_frames`` frames, everything but the frozen encoders trained) with and without
  gradient checkpointing, and of an expert stage (U-Net frozen), all under bf16 autocast
  as ``precision: bf16-mixed`` runs them.

One network is built per part and converted variant by variant, so building 3 B parameters
is paid once. The goal of the design: real time (≤ 1 s per second of video) on one H100 at
512² with ≤ 6 GB. Without CUDA it says so in one line and stops; ``--device cpu --preset tiny``
runs the same code on a CPU as a smoke test.

    python benchmarks/bench_gpu.py [--clip_frames 16] [--clips 1] [--train_frames 16]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from clips import make_batch, make_test_clip  # noqa: E402
from jsonargparse import CLI  # noqa: E402
from lightning.fabric.utilities.apply_func import move_data_to_device  # noqa: E402

from moee.inference.conditions import EmotionTrack  # noqa: E402
from moee.inference.pipeline import MoEEPipeline  # noqa: E402
from moee.inference.sampling import SamplerSettings  # noqa: E402
from moee.models.moee_net import MoEENet, MoEENetConfig  # noqa: E402
from moee.models.pretrained import Preset  # noqa: E402
from moee.stages import BackboneModule, ExpertModule  # noqa: E402
from moee.stages.losses import MoEELoss  # noqa: E402

VARIANTS = ("fp32", "bf16", "bf16+cl", "bf16+cl+compile")
TRAINING = ("backbone", "backbone+checkpointing", "expert+checkpointing")
FPS = 25


def configure(net: MoEENet, unet: torch.nn.Module, variant: str) -> None:
    """Turn ``net`` (whose eager denoiser U-Net is ``unet``) into ``variant`` in place."""
    net.denoiser.unet = unet
    net.to(torch.bfloat16 if variant.startswith("bf16") else torch.float32)
    net.to(memory_format=torch.channels_last if "+cl" in variant else torch.contiguous_format)
    if variant.endswith("compile"):
        net.denoiser.unet = torch.compile(unet)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float:
    """The peak GPU memory allocated since the last reset, in GiB (NaN on a CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else \
        float("nan")


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def timed(work: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``work()``, the GPU's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def inference(preset: Preset, target: torch.device, clip_frames: int, clips: int,
              steps: tuple[int, ...], variants: tuple[str, ...]) -> None:
    """Print s per second of video and peak memory per variant and step count."""
    print(f"inference: {clips} clip(s) × {clip_frames} frames, 3 guidance branches batched")
    print(f"{'variant':18} {'steps':>5} {'s/frame':>8} {'s per s of video':>17} {'peak GPU':>9}")
    net = MoEENet(MoEENetConfig(preset=preset)).eval().to(target)
    unet = net.denoiser.unet
    frames = clips * clip_frames
    audio = np.random.default_rng(0).normal(0, 0.1, frames * 640).astype(np.float32)
    track = EmotionTrack.parse("happily surprised")
    for variant in variants:
        configure(net, unet, variant)
        reference = torch.rand(3, net.vae.sample_size, net.vae.sample_size) * 2 - 1
        for index, count in enumerate(steps):
            pipeline = MoEEPipeline(net, SamplerSettings(steps=count, clip_frames=clip_frames),
                                    progress=False)
            if index == 0:  # one clip of warm-up per variant: cuDNN's choices, compilation
                timed(partial(pipeline.generate, reference, audio[: clip_frames * 640], track),
                      target)
            reset_peak(target)
            seconds = timed(partial(pipeline.generate, reference, audio, track,
                                    torch.Generator().manual_seed(0)), target) / frames
            print(f"{variant:18} {count:5} {seconds:8.3f} {seconds * FPS:17.2f} "
                  f"{peak_gib(target):7.2f} G", flush=True)
    del net, unet
    if target.type == "cuda":
        torch.cuda.empty_cache()


def training_stage(kind: str, preset: Preset) -> BackboneModule | ExpertModule:
    """The stage of one training row, its network in float32 (autocast makes it bf16)."""
    net = MoEENetConfig(preset=preset, gradient_checkpointing=kind.endswith("checkpointing"))
    loss = MoEELoss(pixel_weight=0.1, perceptual_weights="random")
    if kind.startswith("expert"):
        return ExpertModule(net=net, loss=loss, emotion="sad")
    return BackboneModule(net=net, loss=loss, mode="video")


def training_step(stage: BackboneModule | ExpertModule, optimizer: torch.optim.Optimizer,
                  batch: dict) -> None:
    """One optimisation step of ``stage`` on ``batch`` under bf16 autocast."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(batch["frames"].device.type, dtype=torch.bfloat16):
        total = stage.diffusion_step(batch)["total"]
    total.backward()
    optimizer.step()


def training(preset: Preset, target: torch.device, frames: int, repeats: int,
             kinds: tuple[str, ...]) -> None:
    """Print seconds per training step and peak memory per stage kind."""
    print(f"training: batch 1 × {frames} frames, bf16 autocast, AdamW")
    print(f"{'stage':24} {'trained':>9} {'s/step':>7} {'peak GPU':>9}")
    batch = None
    for kind in kinds:
        torch.manual_seed(0)
        stage = training_stage(kind, preset).to(target).train()
        if batch is None:
            size = stage.net.vae.sample_size
            clip = make_test_clip(identity="a", emotion="sad", num_frames=frames + 4, size=size)
            batch = move_data_to_device(make_batch([clip], num_frames=frames), target)
        trained = [p for p in stage.parameters() if p.requires_grad]
        step = partial(training_step, stage, torch.optim.AdamW(trained, lr=1e-5), batch)
        billions = sum(p.numel() for p in trained) / 1e9
        try:
            timed(step, target)  # warm-up: the optimiser's state, cuDNN's choices
            reset_peak(target)
            seconds = sorted(timed(step, target) for _ in range(repeats))[repeats // 2]
            print(f"{kind:24} {billions:7.2f} B {seconds:7.2f} {peak_gib(target):7.2f} G",
                  flush=True)
        except torch.OutOfMemoryError:
            print(f"{kind:24} {billions:7.2f} B  out of memory", flush=True)
        del stage, trained, step
        if target.type == "cuda":
            torch.cuda.empty_cache()


def main(preset: Preset = "sd15", device: str = "cuda", clip_frames: int = 16, clips: int = 1,
         steps: tuple[int, ...] = (8, 40), variants: tuple[str, ...] = VARIANTS,
         train_frames: int = 16, train_steps: int = 3,
         stages: tuple[str, ...] = TRAINING) -> None:
    """Print the inference and training figures.

    Args:
        preset: network shape (``sd15``: 512², ``tiny``: 64², for a CPU smoke run).
        device: ``cuda``, ``cuda:1``, ... or ``cpu``.
        clip_frames: frames per clip.
        clips: clips per inference measurement (after a one-clip warm-up).
        steps: step counts to time.
        variants: which of fp32, bf16, bf16+cl, bf16+cl+compile (none: skip inference).
        train_frames: frames per training window.
        train_steps: timed training steps per stage (median reported), after one warm-up.
        stages: which training rows, of backbone, backbone+checkpointing,
            expert+checkpointing (none: skip training).
    """
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here; run on a GPU machine, or pass --device cpu "
                 "--preset tiny for a CPU smoke run")
    name = torch.cuda.get_device_name(target) if target.type == "cuda" else "cpu"
    print(f"{preset} on {name}, torch {torch.__version__}", flush=True)
    if variants:
        inference(preset, target, clip_frames, clips, steps, variants)
    if stages:
        training(preset, target, train_frames, train_steps, stages)


if __name__ == "__main__":
    CLI(main)
