"""Does the tiny speech-emotion encoder hear tone in voices it never heard? With and without
speed perturbation.

Trains the tiny preset's speech-emotion recogniser (``SpeechEmotionModule``: a random
``HubertModel``, the class the real configuration loads as ``superb/hubert-base-superb-er``, and
a 6-way linear head) on the speech windows (``speech_window``, 0.64 s) of SynthEmo's basic-
emotion training clips, then reads the centred window of every basic clip of the held-out (val
and test) identities, whose voices it never heard. The same training runs twice, side by side,
from the same seed: plain windows, then windows played at a speed drawn log-uniformly in ``[1 /
(1 + s), 1 + s]`` (``SamplingOptions.speech_speed``). Prints held-out accuracy every ``every``
steps (chance: 1/6). Needs SynthEmo shards (``python -m moee quickstart`` writes them).

    python benchmarks/bench_speech_emotion.py [--steps 1000] [--speed 0.15]
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from jsonargparse import CLI  # noqa: E402

from moee.data.speech_emotion import (  # noqa: E402
    RandomWindows,
    Voice,
    centred_windows,
    read_voices,
)
from moee.errors import MoEEError  # noqa: E402
from moee.stages import SpeechEmotionModule  # noqa: E402


def train_and_read(train: list[Voice], held_out: list[Voice], speed: float, steps: int,
                   batch: int, lr: float, every: int, seed: int) -> None:
    """Train the recogniser on ``train``; print held-out accuracy every ``every`` steps."""
    torch.manual_seed(seed)
    recogniser = SpeechEmotionModule()
    optimizer = torch.optim.AdamW(recogniser.parameters(), lr=lr)
    centred, truth = centred_windows(held_out)
    start = time.perf_counter()
    windows = iter(RandomWindows(train, batch, speed, seed))
    for step in range(1, steps + 1):
        speech, emotions = next(windows)
        loss = F.cross_entropy(recogniser(speech), emotions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % every == 0:
            recogniser.eval()
            with torch.no_grad():
                accuracy = (recogniser(centred).argmax(1) == truth).float().mean().item()
            recogniser.train()
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
        train = read_voices(f"{synthemo}/train")
        held_out = read_voices(f"{synthemo}/val") + read_voices(f"{synthemo}/test")
    except MoEEError as error:  # e.g. no shards yet: `python -m moee quickstart` writes them
        sys.exit(f"error: {error}")
    print(f"{len(train)} training clips, {len(held_out)} held-out clips of unheard voices")
    for run_speed in (0.0, speed):
        train_and_read(train, held_out, run_speed, steps, batch, lr, every, seed)


if __name__ == "__main__":
    CLI(main)
