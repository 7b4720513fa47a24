"""Inference speed and memory: seconds per generated frame, peak memory, and what the
pipeline's two design choices save — the ReferenceNet run once per clip (vs every step) and the
guidance branches batched into one network call (vs one call per branch).

    python benchmarks/bench_inference.py                         # tiny, 64 px
    python benchmarks/bench_inference.py --preset sd15 --clip-frames 4 --steps 2 --variants false

Random weights (``MoEENetConfig(preset=...)`` without checkpoints); figures are printed, not
checked. Peak memory is the process's maximum resident set size (``getrusage``).
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from jsonargparse import CLI  # noqa: E402

from moee.inference.conditions import EmotionTrack  # noqa: E402
from moee.inference.pipeline import MoEEPipeline  # noqa: E402
from moee.inference.sampling import SamplerSettings  # noqa: E402
from moee.models.moee_net import MoEENet, MoEENetConfig  # noqa: E402
from moee.models.pretrained import Preset  # noqa: E402


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reference_every_step(net: MoEENet):
    """A ``net.forward`` that recomputes the ReferenceNet features on every call."""
    forward, encode = net.forward, net.encode_reference
    cache: dict[str, torch.Tensor] = {}

    def patched_encode(image, motion_latents=None, **kwargs):
        cache.update(image=image, motion=motion_latents, latent=kwargs.get("reference_latent"))
        return encode(image, motion_latents, **kwargs)

    def patched_forward(noisy, timesteps, conditions, **kwargs):
        fresh = encode(cache["image"], cache["motion"], reference_latent=cache["latent"])
        return forward(noisy, timesteps, replace(conditions, reference=fresh.repeat(
            noisy.shape[0])), **kwargs)

    return {"encode_reference": patched_encode, "forward": patched_forward}


def branches_one_by_one(net: MoEENet):
    """A ``net.forward`` that runs each guidance branch as its own call (batch of one)."""
    forward = net.forward

    def patched_forward(noisy, timesteps, conditions, **kwargs):
        return torch.cat([
            forward(noisy[i : i + 1], timesteps[i : i + 1], conditions.select(slice(i, i + 1)),
                    **kwargs)
            for i in range(noisy.shape[0])
        ])

    return {"forward": patched_forward}


def seconds_per_frame(pipeline: MoEEPipeline, frames: int, emotion: str, patches=None) -> float:
    """Wall time of ``generate`` for ``frames`` frames, divided by ``frames``."""
    net = pipeline.net
    for name, function in (patches or {}).items():
        setattr(net, name, function)
    try:
        audio = np.random.default_rng(0).normal(0, 0.1, frames * 640).astype(np.float32)
        reference = torch.rand(3, pipeline.size, pipeline.size) * 2 - 1
        track = EmotionTrack.parse(emotion)
        start = time.perf_counter()
        pipeline.generate(reference, audio, track, torch.Generator().manual_seed(0))
        return (time.perf_counter() - start) / frames
    finally:
        for name in patches or {}:
            delattr(net, name)


def main(
    preset: Preset = "tiny",
    size: int | None = None,
    clip_frames: int = 8,
    clips: int = 2,
    steps: int = 4,
    sampler: str = "dpmpp",
    audio_guidance: float = 3.5,
    emotion_guidance: float = 2.5,
    emotion: str = "happily surprised",
    variants: bool = True,
    threads: int | None = None,
) -> None:
    """Print seconds per frame, peak memory and the two comparisons.

    Args:
        preset: network size (random weights): tiny (64 px) or sd15 (512 px).
        size: image side (default: the preset's).
        clip_frames: frames per clip.
        clips: clips generated (frames = clips × clip_frames).
        steps: denoising steps per clip.
        sampler: dpmpp, ddim or euler.
        audio_guidance: audio guidance scale.
        emotion_guidance: emotion guidance scale (differs from audio: 3 branches).
        emotion: the emotion condition (a compound runs the full gated mixture).
        variants: also time ReferenceNet-per-step and one-call-per-branch.
        threads: torch CPU threads (default: torch's choice).
    """
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    net = MoEENet(MoEENetConfig(preset=preset)).eval()
    settings = SamplerSettings(sampler=sampler, steps=steps, audio_guidance=audio_guidance,
                               emotion_guidance=emotion_guidance, clip_frames=clip_frames)
    pipeline = MoEEPipeline(net, settings, size=size, progress=False)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    print(f"{preset}: {params:.0f} M parameters, built in {time.perf_counter() - start:.1f} s, "
          f"{pipeline.size} px, {torch.get_num_threads()} threads, device cpu")
    print(f"peak memory after build: {peak_rss_gib():.2f} GiB")
    frames = clips * clip_frames
    branches = len(settings.guidance.branches)
    label = f"{clips} clips × {clip_frames} frames, {steps} steps, {branches} guidance branches"
    base = seconds_per_frame(pipeline, frames, emotion)
    print(f"seconds per frame ({label}): {base:.3f}")
    print(f"peak memory after sampling: {peak_rss_gib():.2f} GiB")
    if variants:
        per_step = seconds_per_frame(pipeline, frames, emotion, reference_every_step(net))
        print(f"ReferenceNet every step instead of once per clip: {per_step:.3f} s/frame "
              f"({per_step / base:.2f}×)")
        separate = seconds_per_frame(pipeline, frames, emotion, branches_one_by_one(net))
        print(f"guidance branches as separate calls instead of one batch: {separate:.3f} "
              f"s/frame ({separate / base:.2f}×)")


if __name__ == "__main__":
    CLI(main)
