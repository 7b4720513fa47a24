"""The SynthEmo contact sheet: identities (rows) x the 11 emotion classes (columns)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from moee.data.synth.generator import apex_aus, renderer
from moee.emotions import EMOTION_CLASSES, NEUTRAL
from moee.utils import atomic_path

_HEADER = 28


def contact_sheet(identities: int = 8, size: int = 128, seed: int = 0,
                  intensity: float = 1.0) -> np.ndarray:
    """An RGB image: one row per identity, one column per emotion class, labelled on top."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(identities):
        face = renderer(seed, index, size)
        cells = []
        for name in EMOTION_CLASSES:
            aus = apex_aus(name, 0.0 if name == NEUTRAL else intensity, rng)
            cells.append(face.render(aus)[0])
        rows.append(np.concatenate(cells, 1))
    return with_header(np.concatenate(rows, 0), EMOTION_CLASSES, size)


def with_header(grid: np.ndarray, labels: list[str] | tuple[str, ...], width: int) -> np.ndarray:
    """``grid`` (H, W, 3) uint8 under a white band naming its columns, ``width`` px each (one
    word per line)."""
    header = np.full((_HEADER, grid.shape[1], 3), 255, np.uint8)
    for col, name in enumerate(labels):
        for line, word in enumerate(name.split(" ")):
            cv2.putText(header, word, (col * width + 4, 11 + 12 * line), cv2.FONT_HERSHEY_SIMPLEX,
                        0.36, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, grid], 0)


def write_png(out: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an RGB uint8 image as a PNG (atomically); return its path."""
    with atomic_path(out) as tmp:
        png = tmp.with_suffix(".png")
        if not cv2.imwrite(str(png), image[..., ::-1]):
            raise OSError(f"cannot write {out}")
        os.replace(png, tmp)
    return Path(out)


def write_contact_sheet(out: str | os.PathLike = "docs/synthemo_contact_sheet.png",
                        identities: int = 8, size: int = 128, seed: int = 0) -> Path:
    """Render the contact sheet and write it as a PNG (atomically); return its path."""
    return write_png(out, contact_sheet(identities, size, seed))
