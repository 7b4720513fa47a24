"""Speech windows and their basic emotion, for pretraining a speech-emotion recogniser.

The tiny preset's speech-emotion encoder is a random stand-in for the emotion-recognition
HuBERT the real configuration loads (``superb/hubert-base-superb-er``). It is pretrained as that
one was, on speech alone (:class:`~moee.stages.SpeechEmotionModule`), from the basic-emotion
clips of the training split: only their audio is read (the ``wav``, ``json`` and ``au.npy``
of each sample, no video: :func:`~moee.data.conditions.read_conditions`), once, into memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch

from moee.data.conditions import read_conditions
from moee.data.sampling import SPEECH_FRAMES, draw_speech_speed, speech_window
from moee.emotions import BASIC_EMOTIONS


@dataclass(frozen=True)
class Voice:
    """One basic-emotion clip's audio, trimmed or padded to its frames."""

    audio: np.ndarray  # (frames * 640,) float32
    emotion: int  # index in BASIC_EMOTIONS
    num_frames: int


def read_voices(folder: str) -> list[Voice]:
    """The audio of every basic-emotion clip in a shard folder, read without its video
    (:func:`~moee.data.conditions.read_conditions`: one-line ``ShardError`` for a sample
    without a readable ``json``, ``au.npy`` or ``wav``, or a folder without basic clips)."""
    clips = read_conditions(folder, lambda meta: meta["emotion"] in BASIC_EMOTIONS)
    return [Voice(clip.audio, BASIC_EMOTIONS.index(clip.meta.emotion), len(clip.aus))
            for clip in clips]


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
