"""What the pipeline gives: an :class:`Animation` (frames and their audio) and its mp4."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from moee.data.media import AUDIO_RATE, VIDEO_FPS, write_mp4
from moee.utils import atomic_path


@dataclass
class Animation:
    """A generated video: ``frames`` ``(T, H, W, 3) uint8`` at ``fps``, with its 16 kHz audio."""

    frames: np.ndarray
    audio: np.ndarray
    fps: int = VIDEO_FPS

    def save(self, path: str | os.PathLike, frames_dir: str | os.PathLike | None = None) -> Path:
        """Write an H.264 mp4 with the audio muxed in (atomically) and optionally PNG frames.

        PNGs (``000000.png`` …) are written to a temporary folder renamed to ``frames_dir``.
        """
        if frames_dir is not None:
            with atomic_path(frames_dir, directory=True) as folder:
                for index, frame in enumerate(self.frames):
                    Image.fromarray(frame).save(folder / f"{index:06d}.png")
        return write_mp4(path, self.frames, self.fps, audio=self.audio, sample_rate=AUDIO_RATE)
