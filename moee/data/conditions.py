"""Clips' emotion conditions without their video: training on what a clip says, not shows.

The gating stage's alignment warm-up (:meth:`moee.stages.GatingModule.warm_up_alignment`)
teaches the AU, text and speech paths of Emotion-to-Latents to land where each clip's label
lands. That needs every clip's label, AU track, description and speech, and none of its
frames: reading a sample's ``json``, ``au.npy`` and ``wav`` only skips the video decode, the
costly part of a training sample, and lets each batch carry every modality at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from moee.data.datamodule import ShardSource, resolve_shards
from moee.data.media import SAMPLES_PER_FRAME, MediaError, normalize_track, read_audio
from moee.data.sampling import (
    SamplingOptions,
    apex_window_starts,
    draw_speech_speed,
    speech_window,
)
from moee.data.shards import ClipMeta, ShardError, iter_raw_samples, load_npy
from moee.models.emotion_latents import EmotionInputs


@dataclass(frozen=True)
class ClipConditions:
    """One clip's emotion, as its label, AU track, description and speech track say it."""

    meta: ClipMeta
    aus: np.ndarray  # (T 17) per-frame AU intensities
    track: np.ndarray  # (T * 640,) the speech, normalised as one track (clip_track)


def read_conditions(source: ShardSource, accepts: Callable[[dict], bool] | None = None
                    ) -> list[ClipConditions]:
    """The conditions of every clip of a local shard source (as ``MoEEDataModule`` takes it)
    whose metadata ``accepts`` (e.g. a stage's :class:`~moee.data.datamodule.ClipFilter`),
    read without decoding any video. A remote shard, or a sample without a readable ``json``,
    ``au.npy`` or ``wav``, is a one-line :class:`ShardError`."""
    clips = []
    for url in resolve_shards(source):
        if not os.path.isfile(url):
            raise ShardError(f"{url}: clip conditions are read from local shards only")
        for sample in iter_raw_samples(url):
            key = sample.get("__key__", "?")
            try:
                raw = json.loads(sample["json"])
                if accepts is not None and not accepts(raw):
                    continue
                meta = ClipMeta(**raw)
                aus = load_npy(sample["au.npy"], key, "au.npy")
                audio = read_audio(sample["wav"], meta.sample_rate)
            except (KeyError, ValueError, TypeError, MediaError) as error:
                raise ShardError(f"sample {key!r} in {url}: no readable conditions: "
                                 f"{error}") from None
            total = len(aus) * SAMPLES_PER_FRAME
            audio = np.pad(audio[:total], (0, max(0, total - len(audio))))
            clips.append(ClipConditions(meta, aus.astype(np.float32),
                                        normalize_track(audio.astype(np.float32))))
    if not clips:
        raise ShardError(f"{source}: no clips with emotion conditions for this stage")
    return clips


class ConditionBatches(Iterator[dict]):
    """Endless random batches of clip conditions, every modality present in every sample.

    Each sample is a random clip at a random window drawn as training draws it
    (``options.num_frames``, ``apex_fraction``, ``speech_speed``); its label is the clip's
    weights x intensity, its AUs the window's mean, its speech the window's. A batch is
    ``{"emotion": EmotionInputs, "intensity": (b,), "emotion_name": [b names]}``, the keys
    :meth:`~moee.stages.GatingModule.alignment_loss` reads.
    """

    def __init__(self, clips: list[ClipConditions], options: SamplingOptions, batch_size: int,
                 seed: int | list[int] = 0) -> None:
        self.clips = clips
        self.options = options
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def __next__(self) -> dict:
        f, rows = self.options.num_frames, []
        for index in self.rng.integers(len(self.clips), size=self.batch_size):
            clip = self.clips[index]
            start = int(self.rng.choice(apex_window_starts(clip.aus, f,
                                                           self.options.apex_fraction)))
            speed = draw_speech_speed(self.rng, self.options.speech_speed)
            rows.append((clip, clip.aus[start:start + f].mean(0),
                         speech_window(clip.track, start, f, speed)))
        intensity = torch.tensor([clip.meta.intensity for clip, _, _ in rows])
        weights = torch.tensor([clip.meta.weights for clip, _, _ in rows], dtype=torch.float32)
        texts = [clip.meta.text or None for clip, _, _ in rows]
        present = torch.ones(len(rows), 4, dtype=torch.bool)
        present[:, 2] = torch.tensor([text is not None for text in texts])
        return {
            "emotion": EmotionInputs(
                label=weights * intensity[:, None],
                au=torch.from_numpy(np.stack([au for _, au, _ in rows])),
                text=texts,
                speech=torch.from_numpy(np.stack([speech for _, _, speech in rows])),
                present=present),
            "intensity": intensity,
            "emotion_name": [clip.meta.emotion for clip, _, _ in rows],
        }
