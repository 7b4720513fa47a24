"""Does the tiny speech-emotion encoder hear tone in voices it never heard? With and without
speed perturbation.

Trains the tiny preset's speech-emotion stand-in (a random ``HubertModel``, the class the real
configuration loads as ``superb/hubert-base-superb-er``) with a 6-way linear head on the
speech windows (``speech_window``, 0.64 s) of SynthEmo's basic-emotion training clips, then
reads the centred window of every basic clip of the held-out (val and test) identities, whose
voices it never heard. The same training runs twice, side by side, from the same seed: plain
windows, then windows played at a speed drawn log-uniformly in ``[1 / (1 + s), 1 + s]``
(``SamplingOptions.speech_speed``). Prints held-out accuracy every ``every`` steps (chance: 1/6).
Needs SynthEmo shards (``python -m moee quickstart`` writes them).

    python benchmarks/bench_speech_emotion.py [--steps 1000] [--speed 0.15]
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from jsonargparse import CLI  # noqa: E402

from moee.data.sampling import (  # noqa: E402
    SPEECH_FRAMES,
    clip_audio,
    draw_speech_speed,
    speech_window,
)
from moee.data.shards import decode_clip, iter_raw_samples, shard_urls  # noqa: E402
from moee.emotions import BASIC_EMOTIONS  # noqa: E402
from moee.errors import MoEEError  # noqa: E402
from moee.models import pretrained  # noqa: E402
from moee.models.emotion_latents import SpeechEmotionEncoder  # noqa: E402

Voices = list[tuple[np.ndarray, int, int]]
"""(audio, basic emotion index, frames) per clip."""


def basic_clips(folders: list[str]) -> Voices:
    """Every basic-emotion clip of the SynthEmo splits in ``folders``."""
    out = []
    for folder in folders:
        for url in shard_urls(folder):
            for raw in iter_raw_samples(url):
                clip = decode_clip(raw)
                if clip.meta.emotion in BASIC_EMOTIONS:
                    out.append((clip_audio(clip), BASIC_EMOTIONS.index(clip.meta.emotion),
                                len(clip.frames)))
    return out


def train_and_read(train: Voices, held_out: Voices, speed: float, steps: int, batch: int,
                   lr: float, every: int, seed: int) -> None:
    """Train encoder and head on ``train``; print held-out accuracy every ``every`` steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    encoder = SpeechEmotionEncoder(
        pretrained.build_speech_encoder(pretrained.PRESETS["tiny"], None))
    head = torch.nn.Linear(encoder.hidden_size, len(BASIC_EMOTIONS))
    parameters = [*encoder.parameters(), *head.parameters()]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    centred = torch.from_numpy(np.stack(
        [speech_window(audio, (frames - SPEECH_FRAMES) // 2, SPEECH_FRAMES)
         for audio, _, frames in held_out]))
    truth = torch.tensor([label for _, label, _ in held_out])
    start = time.perf_counter()
    for step in range(1, steps + 1):
        picks = rng.integers(len(train), size=batch)
        windows = []
        for i in picks:
            audio, _, frames = train[i]
            first = int(rng.integers(frames - SPEECH_FRAMES + 1))
            windows.append(speech_window(audio, first, SPEECH_FRAMES,
                                         draw_speech_speed(rng, speed)))
        labels = torch.tensor([train[i][1] for i in picks])
        loss = F.cross_entropy(head(encoder(torch.from_numpy(np.stack(windows)))), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % every == 0:
            encoder.eval()
            with torch.no_grad():
                accuracy = (head(encoder(centred)).argmax(1) == truth).float().mean().item()
            encoder.train()
            print(f"speed {speed:.2f}  step {step:5d}  train loss {loss.item():.2f}  "
                  f"held-out accuracy {accuracy:.2f}  ({time.perf_counter() - start:.0f} s)",
                  flush=True)


def main(synthemo: str = "runs/synthemo", steps: int = 1000, speed: float = 0.15,
         batch: int = 16, lr: float = 1e-3, every: int = 200, seed: int = 0) -> None:
    """Print the held-out accuracy of the speech-emotion stand-in, plain and speed-perturbed.

    Args:
        synthemo: folder with the ``train``, ``val`` and ``test`` SynthEmo splits.
        steps: training steps of each run.
        speed: the perturbed run's ``speech_speed``.
        batch: speech windows per step.
        lr: AdamW learning rate.
        every: steps between held-out readings.
        seed: seed of both runs (weights, windows).
    """
    try:
        train = basic_clips([f"{synthemo}/train"])
        held_out = basic_clips([f"{synthemo}/val", f"{synthemo}/test"])
    except MoEEError as error:  # e.g. no shards yet: `python -m moee quickstart` writes them
        sys.exit(f"error: {error}")
    print(f"{len(train)} training clips, {len(held_out)} held-out clips of unheard voices")
    for run_speed in (0.0, speed):
        train_and_read(train, held_out, run_speed, steps, batch, lr, every, seed)


if __name__ == "__main__":
    CLI(main)
