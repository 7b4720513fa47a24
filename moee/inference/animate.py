"""``python -m moee animate``: one portrait + one speech track + an emotion → one mp4.

Example::

    python -m moee animate --image anna.jpg --audio hello.m4a --emotion "happily surprised" \\
        --weights runs/tiny/weights --out anna.mp4 --net-preset tiny --steps 8

Bad inputs (no face or several faces, unreadable or silent audio, an unknown emotion, missing
weights) print one ``error: ...`` line to stderr and exit with status 1; no output is written.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import ArgumentParser

from moee.data.faces import NATIVE_LOGS, DetectorName
from moee.emotions import BASIC_EMOTIONS
from moee.errors import MoEEError, one_line
from moee.inference.inputs import prepare_inputs
from moee.inference.pipeline import MoEEPipeline
from moee.inference.portrait import InputError, PortraitSettings
from moee.inference.sampling import SamplerName, SamplerSettings
from moee.models.moee_net import MoEENetConfig
from moee.models.pretrained import (
    PRESETS,
    SD15_WEIGHTS,
    Preset,
)

STAGE_FILES = ("backbone", *(f"expert_{e}" for e in BASIC_EMOTIONS), "gating")
"""Stage exports of a weights folder, in loading order."""


def stage_weights(paths: list[str]) -> list[str]:
    """Expand a weights folder into its stage exports in loading order; files pass through."""
    expanded = []
    for path in paths:
        if os.path.isdir(path):
            expanded += [os.path.join(path, f"{name}.safetensors") for name in STAGE_FILES]
        else:
            expanded.append(path)
    return expanded


def animate(
    image: str,
    audio: str,
    out: str,
    weights: list[str],
    emotion: str = "neutral",
    net_preset: Preset = "tiny",
    sampler: SamplerName = "dpmpp",
    steps: int = 25,
    audio_guidance: float = 3.5,
    emotion_guidance: float = 2.5,
    clip_frames: int = 16,
    transition: float = 1.0,
    strength: float = 1.0,
    seed: int = 0,
    compose_compounds: float | None = None,
    compound_audio_guidance: float | None = None,
    size: int | None = None,
    detect: bool = True,
    detector: DetectorName = "mediapipe",
    margin: float = 1.8,
    paste_back: bool = False,
    feather: float = 0.1,
    frames_dir: str | None = None,
    device: str = "auto",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    progress: bool = True,
) -> Path:
    """Animate a portrait with speech under an emotion condition and write an mp4.

    Args:
        image: the portrait (any image format; one face).
        audio: the speech (any audio format, rate and channel count).
        out: the mp4 to write (H.264, 25 fps, the input audio muxed in).
        weights: trained weights in loading order (backbone, experts, gating), or a folder
            holding backbone.safetensors, expert_<emotion>.safetensors and gating.safetensors.
        emotion: "happy", "sad@0.4", "happily surprised", "happy:0.7,surprised:0.3",
            "AU6:0.8,AU12:1", "text:a faint smile", "speech", "neutral", or a timeline like
            "0s:neutral,3s:happy,6s:sadly surprised".
        net_preset: network size: tiny (CPU) or sd15 (pretrained SD-1.5 parts).
        sampler: dpmpp (DPM-Solver++ 2M), ddim or euler.
        steps: denoising steps per clip.
        audio_guidance: classifier-free guidance scale of the audio.
        emotion_guidance: classifier-free guidance scale of the emotion.
        clip_frames: frames per clip (the model's training window).
        transition: seconds over which a timeline blends into its next emotion.
        strength: 1 samples from pure noise; below 1 starts from the portrait's latent noised
            to that share of the schedule (see ``SamplerSettings.strength``).
        compose_compounds: guide a compound's two emotions each through its own expert, the
            adverb's at this weight (``SamplerSettings.compose_compounds``; the tiny model: 1.5).
        compound_audio_guidance: audio guidance of composed compounds (default: audio_guidance;
            the tiny model: 5).
        seed: seed of the noise.
        size: face crop side in pixels (default: the network's image size).
        detect: find the face; false takes the image's centre square (already a face crop).
        detector: face detector: mediapipe or haar.
        margin: crop side as a multiple of the face size.
        paste_back: paste the animated face back into the full photo.
        feather: blend width at the pasted crop's edge (fraction of its side).
        frames_dir: also write the frames as PNGs into this folder.
        device: cpu, cuda, cuda:1, ... or auto.
        dtype: floating-point type of the network.
        progress: show a progress bar.
    """
    settings = SamplerSettings(sampler=sampler, steps=steps, audio_guidance=audio_guidance,
                               emotion_guidance=emotion_guidance, clip_frames=clip_frames,
                               transition=transition, strength=strength, seed=seed,
                               compose_compounds=compose_compounds,
                               compound_audio_guidance=compound_audio_guidance)
    portrait = PortraitSettings(detect=detect, detector=detector, margin=margin,
                                paste_back=paste_back, feather=feather)
    size = size or PRESETS[net_preset].image_size
    inputs = prepare_inputs(image, audio, emotion, size, portrait, transition)
    pipeline = load_pipeline(weights, net_preset, settings, size, device, dtype, progress)
    return pipeline.render(inputs).save(out, frames_dir)


def load_pipeline(
    weights: list[str],
    net_preset: Preset = "tiny",
    settings: SamplerSettings | None = None,
    size: int | None = None,
    device: str = "auto",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    progress: bool = True,
) -> MoEEPipeline:
    """Build the ``net_preset`` network, load ``weights`` (files or folders, see
    :func:`animate`) and move it to ``device`` (``auto``: CUDA when present) and ``dtype``."""
    if not weights:
        raise InputError("no --weights given; pass the trained stage exports or their folder")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    net = MoEENetConfig(preset=net_preset, weights=SD15_WEIGHTS) if net_preset == "sd15" \
        else MoEENetConfig(preset=net_preset)
    pipeline = MoEEPipeline.from_weights(net, stage_weights(weights), settings=settings,
                                         size=size, progress=progress)
    pipeline.net.to(device=device, dtype=getattr(torch, dtype))
    return pipeline


def underscored(argv: list[str]) -> list[str]:
    """``--net-preset x`` → ``--net_preset x`` (both spellings are accepted)."""
    normalized = []
    for arg in argv:
        if arg.startswith("--"):
            name, equals, value = arg[2:].partition("=")
            arg = f"--{name.replace('-', '_')}{equals}{value}"
        normalized.append(arg)
    return normalized


def build_parser() -> ArgumentParser:
    """The ``moee animate`` parser: every parameter of :func:`animate` as an option."""
    parser = ArgumentParser(
        prog="python -m moee animate",
        description="Animate one portrait with speech under an emotion condition.",
        default_env=False,
    )
    parser.add_function_arguments(animate, skip={"weights"})
    parser.add_argument("--weights", nargs="+", required=True,
                        help="trained weights in loading order, or their folder")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the face models' native start-up logging")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m moee animate`` (options: ``--help``)."""
    args = build_parser().parse_args(underscored(sys.argv[1:] if argv is None else argv))
    NATIVE_LOGS["show"] = args.pop("verbose")
    logging.basicConfig(level=logging.INFO if NATIVE_LOGS["show"] else logging.WARNING,
                        format="%(message)s")
    try:
        path = animate(**args.as_dict())
    except MoEEError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)
    print(path)
