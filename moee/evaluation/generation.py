"""Clip generation for evaluation: each test clip animated from its reference frame, its
frame-aligned audio and its own emotion condition (its label, its description or its speech's
tone), with noise fixed by the clip's key."""

from __future__ import annotations

import zlib
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from moee.data.media import SAMPLES_PER_FRAME
from moee.data.sampling import AUDIO_CONTEXT
from moee.emotions import EMOTION_CLASSES, NEUTRAL, EmotionCondition, parse_emotion
from moee.errors import BadInputError
from moee.inference.conditions import EmotionTrack
from moee.inference.pipeline import MoEEPipeline


def clip_condition(name: str, intensity: float) -> EmotionCondition:
    """A clip's own emotion condition: its label at its intensity (neutral has none)."""
    name = parse_emotion(name).name
    return parse_emotion(name if name == NEUTRAL else f"{name}@{min(max(intensity, 0.0), 1.0)}")


ClipConditioning = Literal["label", "text", "speech"]
"""What a test clip is animated under: ``label`` its label at its intensity
(:func:`clip_condition`), ``text`` its text description (``text:...``), ``speech`` its own
speech's tone. Labels reach their experts directly; descriptions and speech go through the
emotion-to-latents paths (and the global gate, where speech is routed by the gates)."""


def clip_emotion(batch: dict[str, Any], index: int,
                 conditioning: ClipConditioning = "label") -> EmotionCondition:
    """The emotion condition clip ``index`` of a test batch is animated under (see
    :data:`ClipConditioning`); a clip without a description under ``text`` is refused in one
    line."""
    if conditioning == "label":
        return clip_condition(batch["emotion_name"][index], float(batch["intensity"][index]))
    if conditioning == "speech":
        return parse_emotion("speech")
    if conditioning != "text":
        raise ValueError(f"unknown conditioning {conditioning!r}; valid: label, text, speech")
    text = batch["emotion"].text[index]
    if not text:
        raise BadInputError(f"test clip {batch['key'][index]!r} has no text description: "
                            "score text conditions on a test split whose clips have one "
                            "(SynthEmo's do)")
    return parse_emotion(f"text:{text}")


def window_speech(batch: dict[str, Any]) -> Tensor:
    """The batch's audio without its context frames: ``(b, f · 640)``, frame-aligned."""
    frames = batch["frames"].shape[1]
    start = AUDIO_CONTEXT * SAMPLES_PER_FRAME
    return batch["audio"][:, start : start + frames * SAMPLES_PER_FRAME]


def suite_inputs(batch: dict[str, Any]) -> dict[str, Tensor]:
    """The metric-suite keys a test batch provides, except ``generated``.

    ``requested_emotion`` (an index of ``EMOTION_CLASSES``) is given only when every clip's
    emotion is one of them; ``requested_au`` is the clip's mean AU intensities.
    """
    names = [parse_emotion(n).name for n in batch["emotion_name"]]
    inputs = {"target": batch["frames"], "reference": batch["reference"],
              "audio": window_speech(batch), "requested_au": batch["emotion"].au}
    if all(n in EMOTION_CLASSES for n in names):
        inputs["requested_emotion"] = torch.tensor(
            [EMOTION_CLASSES.index(n) for n in names], device=batch["frames"].device)
    return inputs


def sample_seed(seed: int, key: str) -> int:
    """The noise seed of one clip: fixed by its key, whatever the batch or DDP layout."""
    return seed + zlib.crc32(key.encode())


@torch.no_grad()
def generate_clips(pipeline: MoEEPipeline, batch: dict[str, Any], seed: int = 0,
                   conditioning: ClipConditioning = "label") -> Tensor:
    """Animate every clip of a batch: ``(b, f, 3, H, W)`` in [-1, 1] (uint8-quantised).

    Each clip's reference frame, its frame-aligned audio and its own emotion condition
    (:func:`clip_emotion`) go through :meth:`MoEEPipeline.generate`.
    """
    reference, target = batch["reference"], batch["frames"]
    if reference.shape[-1] != pipeline.size:
        raise ValueError(f"test frames are {reference.shape[-1]} px but the model makes "
                         f"{pipeline.size} px: set data.init_args.sampling.image_size "
                         f"{pipeline.size}")
    speech = window_speech(batch).float().cpu().numpy()
    clips = []
    for index, key in enumerate(batch["key"]):
        condition = clip_emotion(batch, index, conditioning)
        generator = torch.Generator().manual_seed(sample_seed(seed, key))
        frames = pipeline.generate(reference[index], speech[index], EmotionTrack.parse(condition),
                                   generator)
        clips.append(torch.from_numpy(np.ascontiguousarray(frames)))
    video = torch.stack(clips).to(target.device).movedim(-1, -3).float()  # b f 3 H W
    return video / 127.5 - 1
