"""Speech windows and their basic emotion, for pretraining a speech-emotion recogniser.

The tiny preset's speech-emotion encoder is a random stand-in for the emotion-recognition
HuBERT the real configuration loads (``superb/hubert-base-superb-er``). It is pretrained as that
one was, on speech alone (:class:`~moee.stages.SpeechEmotionModule`), from the basic-emotion
clips of the training split: only their audio is read (the ``wav`` and ``json`` of each
sample, no video), once, into memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch

from moee.data.media import SAMPLES_PER_FRAME, MediaError, read_audio
from moee.data.sampling import SPEECH_FRAMES, draw_speech_speed, speech_window
from moee.data.shards import ClipMeta, ShardError, iter_raw_samples, shard_urls
from moee.emotions import BASIC_EMOTIONS


@dataclass(frozen=True)
class Voice:
    """One basic-emotion clip's audio, trimmed or padded to its frames."""

    audio: np.ndarray  # (frames * 640,) float32
    emotion: int  # index in BASIC_EMOTIONS
    num_frames: int


def read_voices(folder: str) -> list[Voice]:
    """The audio of every basic-emotion clip in a shard folder (one-line ``ShardError`` for a
    sample without a readable ``wav`` or ``json``)."""
    voices = []
    for url in shard_urls(folder):
        for sample in iter_raw_samples(url):
            key = sample.get("__key__", "?")
            try:
                meta = ClipMeta(**json.loads(sample["json"]))
                if meta.emotion not in BASIC_EMOTIONS:
                    continue
                audio = read_audio(sample["wav"], meta.sample_rate)
            except (KeyError, ValueError, TypeError, MediaError) as error:
                raise ShardError(f"sample {key!r} in {url}: no readable speech: {error}") from None
            total = meta.num_frames * SAMPLES_PER_FRAME
            audio = np.pad(audio[:total], (0, max(0, total - len(audio)))).astype(np.float32)
            voices.append(Voice(audio, BASIC_EMOTIONS.index(meta.emotion), meta.num_frames))
    if not voices:
        raise ShardError(f"{folder}: no basic-emotion clips to hear")
    return voices


def centred_windows(voices: list[Voice]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip's middle speech window (n s) and its emotion (n,): the evaluation set."""
    windows = [speech_window(v.audio, max(0, (v.num_frames - SPEECH_FRAMES) // 2), SPEECH_FRAMES)
               for v in voices]
    return (torch.from_numpy(np.stack(windows)),
            torch.tensor([v.emotion for v in voices]))


class RandomWindows(torch.utils.data.IterableDataset):
    """Endless batches of speech windows at random places of random clips, each played at a
    speed drawn by :func:`draw_speech_speed`."""

    def __init__(self, voices: list[Voice], batch_size: int, speed: float, seed: int) -> None:
        self.voices, self.batch_size, self.speed, self.seed = voices, batch_size, speed, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng(self.seed)
        while True:
            picks = [self.voices[i] for i in rng.integers(len(self.voices), size=self.batch_size)]
            starts = [int(rng.integers(max(1, v.num_frames - SPEECH_FRAMES + 1))) for v in picks]
            windows = [speech_window(v.audio, start, SPEECH_FRAMES,
                                     draw_speech_speed(rng, self.speed))
                       for v, start in zip(picks, starts)]
            yield (torch.from_numpy(np.stack(windows)), torch.tensor([v.emotion for v in picks]))


class SpeechEmotionDataModule(L.LightningDataModule):
    """Speech windows (b s) and basic-emotion indices (b,) from SynthEmo-format shards.

    Args:
        train: training shard folder (its basic-emotion clips).
        val: validation shard folder, of voices the training split does not have (each clip's
            middle window); ``None``: no validation.
        batch_size: windows per training batch.
        speech_speed: speed perturbation of the training windows
            (:func:`~moee.data.sampling.draw_speech_speed`): the recogniser hears tone rather
            than the training speakers' rates (``benchmarks/bench_speech_emotion.py``).
        seed: seed of the windows drawn.
    """

    def __init__(self, train: str, val: str | None = None, batch_size: int = 16,
                 speech_speed: float = 0.15, seed: int = 0) -> None:
        super().__init__()
        self.train, self.val = train, val
        self.batch_size, self.speech_speed, self.seed = batch_size, speech_speed, seed

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        windows = RandomWindows(read_voices(self.train), self.batch_size, self.speech_speed,
                                self.seed)
        return torch.utils.data.DataLoader(windows, batch_size=None)

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        if self.val is None:
            return []
        windows, emotions = centred_windows(read_voices(self.val))
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(windows, emotions), batch_size=64)
