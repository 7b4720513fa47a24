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
from moee.data.media import MediaError, normalize_track, read_audio
from moee.data.sampling import (
    SamplingOptions,
    apex_window_starts,
    draw_speech_speed,
    frames_audio,
    speech_window,
)
from moee.data.shards import ClipMeta, ShardError, iter_raw_samples, load_npy
from moee.models.emotion_latents import EmotionInputs


@dataclass(frozen=True)
class ClipConditions:
    """One clip's emotion, as its label, AU track, description and speech say it."""

    meta: ClipMeta
    aus: np.ndarray  # (T 17) per-frame AU intensities
    audio: np.ndarray  # (T * 640,) float32 speech, trimmed or padded to the frames

    @property
    def track(self) -> np.ndarray:
        """The speech normalised as one track, as training hears it (``clip_track``)."""
        return normalize_track(self.audio)


def read_conditions(source: ShardSource, accepts: Callable[[dict], bool] | None = None
                    ) -> list[ClipConditions]:
    """The conditions of every clip of a local shard source (as ``MoEEDataModule`` takes it)
    whose metadata ``accepts`` (e.g. a stage's :class:`~moee.data.datamodule.ClipFilter`),
    read without decoding any video. A remote shard, a sample without a readable ``json``,
    ``au.npy`` or ``wav``, or no clip accepted, is a one-line :class:`ShardError`."""
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
            clips.append(ClipConditions(meta, aus.astype(np.float32),
                                        frames_audio(audio, len(aus)).astype(np.float32)))
    if not clips:
        raise ShardError(f"{source}: no clips of the emotions this stage reads")
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
        if batch_size < 1:
            raise ValueError(f"a batch needs at least one clip, got batch_size {batch_size}")
        self.clips = [clip for clip in clips if len(clip.aus) >= options.num_frames]
        if not self.clips:  # as training skips them
            raise ShardError(f"every clip is shorter than a window of {options.num_frames} "
                             "frames: lower sampling.num_frames")
        self.options = options
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def __next__(self) -> dict:
        f, options = self.options.num_frames, self.options
        clips = [self.clips[i] for i in self.rng.integers(len(self.clips), size=self.batch_size)]
        aus, speech = [], []
        for clip in clips:
            start = int(self.rng.choice(apex_window_starts(clip.aus, f, options.apex_fraction)))
            speed = draw_speech_speed(self.rng, options.speech_speed)
            aus.append(clip.aus[start:start + f].mean(0))
            speech.append(speech_window(clip.track, start, f, speed))
        intensity = torch.tensor([clip.meta.intensity for clip in clips])
        texts = [clip.meta.text or None for clip in clips]
        present = torch.ones(len(clips), 4, dtype=torch.bool)
        present[:, 2] = torch.tensor([text is not None for text in texts])
        return {
            "emotion": EmotionInputs(
                label=torch.tensor([clip.meta.weights for clip in clips]) * intensity[:, None],
                au=torch.from_numpy(np.stack(aus)), text=texts,
                speech=torch.from_numpy(np.stack(speech)), present=present),
            "intensity": intensity,
            "emotion_name": [clip.meta.emotion for clip in clips],
        }
