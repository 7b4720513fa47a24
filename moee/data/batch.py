"""The training batch: its layout and the collate function.

Every stage reads the same keys (``b`` batch, ``f`` frames per window, ``H = W`` image side).
Loader workers keep the three image tensors uint8 (4× less to convert and to pass between
processes); ``MoEEDataModule.on_after_batch_transfer`` turns them into float32 in [-1, 1] on
the device, so a LightningModule always sees the layout below. Outside Lightning, call
:func:`normalize_images` on a loader batch::

    frames               (b, f, 3, H, W) float32 in [-1, 1]
    reference            (b, 3, H, W)    float32 in [-1, 1], mouth masked where reference_is_masked
    motion_frames        (b, 2, 3, H, W) the 2 frames before the window (first frame at clip start)
    reference_is_masked  (b,) bool       reference from masked noisy emotion sampling
    audio                (b, (f + 4) * 640) float32, 16 kHz, 2 frames of context each side
    emotion              EmotionInputs (moee.models.emotion_latents): Emotion-to-Latents' input
        label            (b, 6)  basic-emotion weights × intensity (BASIC_EMOTIONS order)
        au               (b, 17) mean AU intensities over the window (ACTION_UNITS order)
        text             list[str | None] descriptions (None when absent)
        speech           (b, max(16, f) * 640) audio around the window (``speech_window``), for
                         the speech-emotion encoder
        present          (b, 4) bool: which of (label, au, text, speech) the sample has
    emotion_index        (b,) long: basic-emotion index, -1 for neutral and compounds
    emotion_name         list[str]
    intensity            (b,) float32
    landmarks            (b, f, 68, 2) iBUG-68 (x, y) in [0, 1]
    au_frames            (b, f, 17)
    mouth_mask           (b, 1, H, W) float32 {0, 1}, mouth of the reference frame
    identity, key        list[str]
    start_frame          (b,) long: first frame of the window in its clip
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from moee.models.emotion_latents import EmotionInputs

STRING_KEYS = ("emotion_name", "identity", "key")
SCALAR_DTYPES = {
    "reference_is_masked": torch.bool,
    "emotion_index": torch.long,
    "intensity": torch.float32,
    "start_frame": torch.long,
}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples from :class:`~moee.data.sampling.ClipSampler` into one batch."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        if key == "emotion":
            batch[key] = collate_emotions([s["emotion"] for s in samples])
        elif key in STRING_KEYS:
            batch[key] = [s[key] for s in samples]
        elif key in SCALAR_DTYPES:
            batch[key] = torch.tensor([s[key] for s in samples], dtype=SCALAR_DTYPES[key])
        else:
            batch[key] = torch.stack([s[key] for s in samples])
    return batch


def collate_emotions(emotions: list[dict[str, Any]]) -> EmotionInputs:
    """The samples' emotion dicts (:class:`~moee.data.sampling.EmotionSample` as tensors) as
    one :class:`EmotionInputs` (an empty description is no description)."""
    def stacked(name: str) -> torch.Tensor:
        return torch.stack([e[name] for e in emotions])
    return EmotionInputs(label=stacked("label"), au=stacked("au"),
                         text=[e["text"] or None for e in emotions], speech=stacked("speech"),
                         present=stacked("present"))


IMAGE_KEYS = ("frames", "reference", "motion_frames")


def normalize_images(batch: dict[str, Any]) -> dict[str, Any]:
    """uint8 images of a batch → float32 in [-1, 1], in place (no-op if already float).

    Masked mouths of MNS references (and of the motion frames they stand in for) become
    exactly 0.0 (grey).
    """
    if batch["frames"].dtype != torch.uint8:
        return batch
    for key in IMAGE_KEYS:
        batch[key] = batch[key].float().div_(127.5).sub_(1.0)
    masked = batch["reference_is_masked"].view(-1, 1, 1, 1) & batch["mouth_mask"].bool()
    batch["reference"].masked_fill_(masked, 0.0)
    batch["motion_frames"].masked_fill_(masked[:, None], 0.0)
    return batch


def downsampled_images(batch: dict[str, Any], size: int) -> dict[str, Any]:
    """A shallow copy of a normalised batch with its images (``IMAGE_KEYS``) area-averaged to
    ``size`` × ``size`` and its ``mouth_mask`` to match (a coarse pixel is mouth where any of
    its fine ones is). Landmarks are in [0, 1] and stay as they are."""
    if size > batch["frames"].shape[-1]:
        raise ValueError(f"cannot downsample {batch['frames'].shape[-1]} px frames to {size} px")
    smaller = dict(batch)
    for key in (*IMAGE_KEYS, "mouth_mask"):
        images = batch[key]
        flat = images.reshape(-1, *images.shape[-3:])
        flat = torch.nn.functional.interpolate(flat, size=(size, size), mode="area")
        smaller[key] = flat.reshape(*images.shape[:-2], size, size)
    smaller["mouth_mask"] = smaller["mouth_mask"].gt(0).to(batch["mouth_mask"].dtype)
    return smaller


def from_numpy_frames(frames: np.ndarray) -> torch.Tensor:
    """``(..., H, W, 3) uint8`` → ``(..., 3, H, W)`` float32 in [-1, 1] (the model's images; the
    inverse of :func:`to_numpy_frames`)."""
    return torch.from_numpy(frames).movedim(-1, -3).float().div(127.5).sub(1.0)


def to_numpy_frames(images: torch.Tensor) -> np.ndarray:
    """``(..., 3, H, W)`` in [-1, 1] → ``(..., H, W, 3) uint8`` (for writing or viewing)."""
    array = images.detach().cpu().movedim(-3, -1).add(1.0).mul(127.5).round().clamp(0, 255)
    return array.to(torch.uint8).numpy()
