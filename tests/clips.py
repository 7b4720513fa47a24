"""Test fixtures: procedural clips whose frames and audio say which frame they are, and batches.

Frame ``k`` of a test clip carries ``k`` twice, so alignment can be checked exactly after
H.264 and PCM coding: in two flat grey blocks in its top corners (:func:`decode_frame_index`)
and in the amplitude of its 1 kHz tone (:func:`decode_audio_index`). The middle of each frame
shows a schematic face drawn from :func:`face_template` landmarks, so mouth masks have a
mouth to cover. :func:`write_test_shards` writes such clips into a shard folder with a manifest;
:func:`make_batch` turns decoded clips into a training batch.

The package does not ship these: the test suite and the benchmarks import them from here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from moee.data.batch import collate, normalize_images
from moee.data.media import AUDIO_RATE, SAMPLES_PER_FRAME
from moee.data.sampling import MNS_LANDMARKS, MNS_REFERENCE, ClipSampler, SamplingOptions
from moee.data.shards import Clip, ClipMeta, ShardWriter, sample_key, write_manifest
from moee.emotions import NEUTRAL, parse_emotion

TONE_HZ = 1000
"""An integer number of periods (40) fits in one frame of audio, and samples hit the peak."""
_LEVELS = 32
_LEVEL_STEP = 7
_AUDIO_LEVELS = 97


def face_template() -> np.ndarray:
    """A schematic frontal face as ``(68, 2)`` iBUG-68 landmarks in [0, 1]."""
    def arc(cx, cy, rx, ry, a0, a1, n):
        angles = np.linspace(a0, a1, n)
        return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], 1)

    parts = [
        arc(0.5, 0.45, 0.3, 0.38, np.pi, 0, 17),  # jaw: lower half, image left to right
        arc(0.35, 0.36, 0.08, 0.03, np.pi, 2 * np.pi, 5),  # right brow
        arc(0.65, 0.36, 0.08, 0.03, np.pi, 2 * np.pi, 5),  # left brow
        np.stack([np.full(4, 0.5), np.linspace(0.42, 0.55, 4)], 1),  # nose bridge
        np.stack([np.linspace(0.45, 0.55, 5), np.full(5, 0.58)], 1),  # nostrils
        arc(0.36, 0.43, 0.05, 0.02, np.pi, 3 * np.pi, 7)[:6],  # right eye
        arc(0.64, 0.43, 0.05, 0.02, np.pi, 3 * np.pi, 7)[:6],  # left eye
        arc(0.5, 0.7, 0.12, 0.05, np.pi, 3 * np.pi, 13)[:12],  # outer lip
        arc(0.5, 0.7, 0.08, 0.025, np.pi, 3 * np.pi, 9)[:8],  # inner lip
    ]
    return np.concatenate(parts).astype(np.float32)


def _encode_index(frame: np.ndarray, index: int) -> None:
    block = frame.shape[0] // 4
    frame[:block, :block] = 16 + _LEVEL_STEP * (index % _LEVELS)
    frame[:block, -block:] = 16 + _LEVEL_STEP * (index // _LEVELS)


def decode_frame_index(frame: np.ndarray) -> int:
    """The index drawn into a ``(H, W, 3) uint8`` test frame (robust to lossy coding)."""
    block = frame.shape[0] // 4
    margin = max(block // 4, 1)
    low = frame[margin : block - margin, margin : block - margin].mean()
    high = frame[margin : block - margin, -block + margin : -margin].mean()
    return int(round((low - 16) / _LEVEL_STEP)) + _LEVELS * int(round((high - 16) / _LEVEL_STEP))


def audio_amplitude(index: int) -> float:
    """Peak amplitude of the tone of frame ``index``."""
    return (1 + index % _AUDIO_LEVELS) / 100


def decode_audio_index(chunk: np.ndarray) -> int | None:
    """The frame index of one 640-sample chunk of test audio; ``None`` for silence (padding)."""
    peak = float(np.abs(chunk).max())
    return None if peak < 0.005 else int(round(peak * 100)) - 1


def draw_face(size: int, landmarks: np.ndarray, skin=(200, 160, 140), lips=(150, 40, 60),
              background: int = 90) -> np.ndarray:
    """Draw a schematic face (skin ellipse, eyes, filled mouth) at ``size`` px."""
    frame = np.full((size, size, 3), background, dtype=np.uint8)
    points = np.round(landmarks * size).astype(np.int32)
    cv2.fillPoly(frame, [cv2.convexHull(points[:27])], skin)
    for eye in (points[36:42], points[42:48]):
        cv2.fillPoly(frame, [eye], (40, 40, 40))
    cv2.fillPoly(frame, [points[48:60]], lips)
    cv2.fillPoly(frame, [points[60:68]], (30, 10, 10))
    return frame


def make_test_clip(
    identity: str = "id0",
    name: str = "clip0",
    emotion: str = "happy",
    num_frames: int = 24,
    size: int = 64,
    intensity: float = 1.0,
    mns_refs: int = 0,
    text: str = "",
    seed: int = 0,
) -> Clip:
    """A clip whose frame ``k`` and audio chunk ``k`` both encode ``k`` (see the module doc).

    The mouth opens and closes with the frame index; ``mns_refs`` > 0 adds MNS extras
    (frames of the same person with blue-ish skin and their landmarks).
    """
    rng = np.random.default_rng(seed)
    condition = parse_emotion(emotion if emotion == NEUTRAL else f"{emotion}@{intensity}")
    template = face_template()
    frames, landmarks = [], []
    for k in range(num_frames):
        points = template.copy()
        opening = 0.02 * (1 + np.sin(k / 2))
        points[48:68, 1] += np.where(points[48:68, 1] > 0.7, opening, -opening / 2)
        points += rng.normal(0, 0.002, points.shape)
        frame = draw_face(size, points)
        _encode_index(frame, k)
        frames.append(frame)
        landmarks.append(points)
    t = np.arange(num_frames * SAMPLES_PER_FRAME) / AUDIO_RATE
    envelope = np.repeat([audio_amplitude(k) for k in range(num_frames)], SAMPLES_PER_FRAME)
    aus = np.tile(np.asarray(condition.au_vector(), dtype=np.float32), (num_frames, 1))
    meta = ClipMeta(
        identity=identity, emotion=condition.name, weights=list(condition.weights),
        intensity=condition.intensity, num_frames=num_frames, size=size, text=text,
        source="tests.clips", extra={"au_source": "prototype"},
    )
    extras = {}
    if mns_refs:
        extras[MNS_REFERENCE] = np.stack(
            [draw_face(size, template, skin=(120, 140, 220)) for _ in range(mns_refs)])
        extras[MNS_LANDMARKS] = np.stack([template] * mns_refs).astype(np.float16)
        meta.extra["mns_emotions"] = [NEUTRAL] * mns_refs
    return Clip(
        key=sample_key(identity, name), meta=meta, frames=np.stack(frames),
        audio=(envelope * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32),
        aus=aus, landmarks=np.stack(landmarks).astype(np.float32), extras=extras,
    )


def write_test_shards(
    folder: str | os.PathLike,
    identities: int = 2,
    emotions: tuple[str, ...] = ("happy", "sad", "happily surprised", NEUTRAL),
    clips_per_emotion: int = 1,
    num_frames: int = 24,
    size: int = 64,
    shard_size: int = 2,
    mns_refs: int = 2,
) -> Path:
    """Write test clips of every identity × emotion into shards with a manifest; return folder."""
    folder = Path(folder)
    with ShardWriter(folder, max_samples=shard_size, crf=12) as writer:
        for i in range(identities):
            for e, emotion in enumerate(emotions):
                for c in range(clips_per_emotion):
                    writer.write(make_test_clip(
                        identity=f"id{i}", name=f"{emotion.replace(' ', '_')}{c}", emotion=emotion,
                        num_frames=num_frames, size=size, intensity=0.5 + 0.5 * (c % 2),
                        mns_refs=0 if emotion == NEUTRAL else mns_refs,
                        text=f"a {emotion} face", seed=100 * i + 10 * e + c,
                    ))
    write_manifest(folder, writer.infos)
    return folder


def make_batch(
    clips: Clip | Iterable[Clip],
    num_frames: int = 16,
    options: SamplingOptions | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Build a batch from decoded clips, one window each (evaluation sampling by default).

    E.g. ``make_batch(make_test_clip(), num_frames=8)``. Pass ``options``
    (e.g. with ``mns_prob``/``jitter_prob``) for training-style random sampling.
    """
    clips = [clips] if isinstance(clips, Clip) else list(clips)
    options = options or SamplingOptions.evaluation(num_frames)
    sampler = ClipSampler(options, seed=seed)
    samples = [s for clip in clips for s in sampler(clip)]
    if not samples:
        lengths = [len(c.frames) for c in clips]
        raise ValueError(f"no clip is long enough for {options.num_frames} frames: {lengths}")
    return normalize_images(collate(samples))
