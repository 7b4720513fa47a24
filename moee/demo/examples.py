"""Example inputs of the demo, made offline: SynthEmo test portraits with SynthEmo speech,
and the scikit-image astronaut photo with espeak-ng speech (where they are installed)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from moee.data.media import encode_wav
from moee.data.synth.audio import espeak_speech, synthesize_speech
from moee.data.synth.generator import ClipConfig, renderer, split_identities
from moee.emotions import NUM_ACTION_UNITS
from moee.utils import atomic_path

log = logging.getLogger(__name__)

SECONDS = 2.0
PORTRAIT_SIZE = 256
ASTRONAUT_LINE = "Hello. I flew to space, and I would go again tomorrow."


@dataclass(frozen=True)
class Example:
    """One row of the page's examples: portrait, speech, condition, and whether to find the
    face (SynthEmo portraits already are face crops)."""

    image: Path
    audio: Path
    emotion: str
    detect: bool

    def row(self) -> list:
        """The row as gr.Examples takes it."""
        return [str(self.image), str(self.audio), self.emotion, self.detect]


def _save_image(path: Path, image: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def _save_wav(path: Path, audio: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_wav(audio))
    return path


def synthemo_portrait(folder: Path, number: int) -> Path:
    """The neutral face of the ``number``-th SynthEmo test identity (never trained on)."""
    identity = split_identities((40, 8, 8))["test"][number]
    face, _ = renderer(ClipConfig().seed, identity, PORTRAIT_SIZE).render(
        np.zeros(NUM_ACTION_UNITS, np.float32))
    return _save_image(folder / f"synthemo_{identity}.png", face)


def synthemo_speech(folder: Path, emotion: str, seed: int) -> Path:
    """SynthEmo's synthetic speech of ``SECONDS`` in the prosody of ``emotion``."""
    speech = synthesize_speech(round(SECONDS * 25), emotion, np.random.default_rng(seed))
    return _save_wav(folder / f"synthemo_{emotion}.wav", speech.audio)


def astronaut_example(folder: Path) -> Example | None:
    """The astronaut photo speaking a line with espeak-ng; ``None`` without scikit-image or
    espeak-ng."""
    try:
        from skimage.data import astronaut
    except ImportError:
        return None
    if shutil.which("espeak-ng") is None:
        return None
    speech = espeak_speech(ASTRONAUT_LINE, round(3 * 25))
    return Example(_save_image(folder / "astronaut.png", astronaut()),
                   _save_wav(folder / "astronaut.wav", speech.audio), "happy", True)


def write_examples(folder: Path) -> list[Example]:
    """Write the example files into ``folder``; returns the examples that could be made."""
    folder.mkdir(parents=True, exist_ok=True)
    first, second = synthemo_portrait(folder, 0), synthemo_portrait(folder, 1)
    examples = [
        Example(first, synthemo_speech(folder, "happy", 0), "happily surprised", False),
        Example(second, synthemo_speech(folder, "sad", 1), "0s:neutral,1s:sad", False),
        Example(first, synthemo_speech(folder, "neutral", 2), "happy:0.7,surprised:0.3", False),
    ]
    astronaut = astronaut_example(folder)
    if astronaut is None:
        log.info("no astronaut example: it needs scikit-image and espeak-ng")
    else:
        examples[1:1] = [astronaut, Example(astronaut.image, astronaut.audio,
                                            "text:a faint, nervous smile", True)]
    return examples
