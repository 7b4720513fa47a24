"""The checked inputs of one animation: speech from any audio, the face crop, the emotion track.
Everything is read and checked before any network runs, each failure a one-line error."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from moee.data.faces import FaceDetector
from moee.data.media import AUDIO_RATE, check_speech, read_audio
from moee.emotions import EmotionCondition
from moee.inference.conditions import EmotionTrack
from moee.inference.portrait import (
    ImageSource,
    Portrait,
    PortraitSettings,
    load_image,
    prepare_portrait,
)

AudioSource = str | os.PathLike | bytes | np.ndarray


def read_speech(source: AudioSource) -> np.ndarray:
    """Speech from any audio file (or a 16 kHz mono array) as float32 16 kHz mono.

    Raises :class:`moee.data.media.MediaError` for unreadable, empty or silent audio.
    """
    if isinstance(source, np.ndarray):
        audio, name = np.asarray(source, dtype=np.float32).reshape(-1), "the audio"
    else:
        name = "audio" if isinstance(source, bytes) else f"audio {os.fspath(source)!r}"
        audio = read_audio(source, sample_rate=AUDIO_RATE)
    return check_speech(audio, what=name)


@dataclass
class PreparedInputs:
    """The checked inputs of one animation: face crop, speech, emotion track, framing."""

    portrait: Portrait
    speech: np.ndarray
    track: EmotionTrack
    settings: PortraitSettings


def prepare_inputs(
    image: ImageSource,
    audio: AudioSource,
    emotion: str | EmotionCondition,
    size: int,
    portrait: PortraitSettings | None = None,
    transition: float = 1.0,
    detector: FaceDetector | None = None,
) -> PreparedInputs:
    """Read and check every input before any network runs, cheapest first.

    Raises, each with a one-line message: ``EmotionSpecError`` (unknown emotion),
    ``MediaError`` (unreadable or silent audio), :class:`InputError` (unreadable image, no face
    or several faces).
    """
    portrait = portrait or PortraitSettings()
    track = EmotionTrack.parse(emotion, transition)
    speech = read_speech(audio)
    name = repr(os.fspath(image)) if isinstance(image, str | os.PathLike) else "the image"
    photo = load_image(image, portrait.max_side, portrait.background)
    face = prepare_portrait(photo, size, portrait, detector, name)
    return PreparedInputs(face, speech, track, portrait)
