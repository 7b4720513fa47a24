"""Which cues do the SynthEmo probes read each emotion from?

Every basic emotion's AU prototype is rendered on fresh identities (a population no split or
probe training draws), whole, with each of its action units left out in turn, and with each
unit alone, at a speech jaw opening; the probes' emotion head reads every render. A unit whose
removal keeps the emotion read is one the probes do not need; one that reads as the emotion
alone carries it. It tells what an Emotion-Acc figure rewards: a model can miss a cue the
probes ignore (and an independent classifier may not) and still score.

    python benchmarks/bench_probe_cues.py [--people 24] [--jaw 0.3]
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from jsonargparse import CLI

from moee.data.batch import from_numpy_frames
from moee.data.synth.generator import renderer
from moee.emotions import BASIC_EMOTIONS, EMOTION_AU_PROTOTYPES, EMOTION_CLASSES, parse_emotion
from moee.evaluation.probes import load_probes

UNSEEN_POPULATION = 777
"""SynthEmo's population seed for the renders: the shards and the probes draw population 0."""


def variants(emotion: str) -> dict[str, str]:
    """The prototype, the prototype without each unit, and each unit alone, as the AU
    conditions a user would write (``"AU6:0.9,AU12:1.0"``)."""
    prototype = EMOTION_AU_PROTOTYPES[emotion]

    def spec(units: dict[str, float]) -> str:
        return ",".join(f"{unit}:{value}" for unit, value in units.items())

    out = {"prototype": spec(prototype)}
    if len(prototype) > 1:
        out |= {f"without {u}": spec({k: v for k, v in prototype.items() if k != u})
                for u in prototype}
        out |= {f"{u} alone": spec({u: v}) for u, v in prototype.items()}
    return out


@torch.no_grad()
def main(people: int = 24, jaw: float = 0.3, size: int = 64) -> None:
    """Print, per emotion and variant, the probes' mean probability of the emotion and the
    three classes most often read.

    Args:
        people: fresh identities rendered per variant.
        jaw: the speech's jaw opening in every render (0: a closed mouth).
        size: render size in px (the probes' own).
    """
    if people < 1 or not 0 <= jaw <= 1:
        sys.exit(f"error: --people must be at least 1 and --jaw in [0, 1], got {people}, {jaw}")
    try:
        probes = load_probes(size)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    faces = [renderer(UNSEEN_POPULATION, i, size) for i in range(people)]
    print(f"{people} unseen identities, speech jaw {jaw}; p = the probes' mean probability "
          "of the emotion")
    for emotion in BASIC_EMOTIONS:
        for name, units in variants(emotion).items():
            aus = np.array(parse_emotion(units).au_vector(), np.float32)
            frames = np.stack([face.render(aus, (jaw, 0.0, 0.0))[0] for face in faces])
            probabilities = probes.emotion_logits(from_numpy_frames(frames)).softmax(-1)
            counts = np.bincount(probabilities.argmax(-1).numpy(), minlength=len(EMOTION_CLASSES))
            read = ", ".join(f"{EMOTION_CLASSES[i]} {counts[i]}"
                             for i in np.argsort(-counts)[:3] if counts[i])
            p = float(probabilities[:, EMOTION_CLASSES.index(emotion)].mean())
            print(f"{emotion:10s} {name:14s} p {p:.2f}   read: {read}")


if __name__ == "__main__":
    CLI(main, as_positional=False)
