"""``python -m moee animate``: one portrait + one speech track + an emotion → one mp4.

Example::

    python -m moee animate --image anna.jpg --audio hello.m4a --emotion "happily surprised" \\
        --weights runs/tiny/weights --out anna.mp4 --net-preset tiny --sampler.steps 8

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

from moee.data.faces import NATIVE_LOGS
from moee.emotions import BASIC_EMOTIONS
from moee.errors import MoEEError, one_line
from moee.inference.inputs import prepare_inputs
from moee.inference.pipeline import MoEEPipeline
from moee.inference.portrait import InputError, PortraitSettings
from moee.inference.sampling import SamplerSettings
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
    sampler: SamplerSettings = SamplerSettings(),
    portrait: PortraitSettings = PortraitSettings(),
    size: int | None = None,
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
        sampler: sampling: sampler, steps, guidance scales, clip frames, transition, strength,
            seed, composed compounds (:class:`SamplerSettings`; ``--sampler.steps 8``).
        portrait: face detection, crop and paste-back (:class:`PortraitSettings`;
            ``--portrait.paste_back true``).
        size: face crop side in pixels (default: the network's image size).
        frames_dir: also write the frames as PNGs into this folder.
        device: cpu, cuda, cuda:1, ... or auto.
        dtype: floating-point type of the network.
        progress: show a progress bar.
    """
    size = size or PRESETS[net_preset].image_size
    inputs = prepare_inputs(image, audio, emotion, size, portrait, sampler.transition)
    pipeline = load_pipeline(weights, net_preset, sampler, size, device, dtype, progress)
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
    parser = build_parser()
    args = parser.parse_args(underscored(sys.argv[1:] if argv is None else argv))
    NATIVE_LOGS["show"] = args.pop("verbose")
    logging.basicConfig(level=logging.INFO if NATIVE_LOGS["show"] else logging.WARNING,
                        format="%(message)s")
    try:
        path = animate(**parser.instantiate_classes(args).as_dict())
    except MoEEError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)
    print(path)
