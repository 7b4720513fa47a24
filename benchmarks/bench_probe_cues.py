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

import numpy as np
import torch
from jsonargparse import CLI

from moee.data.batch import from_numpy_frames
from moee.data.synth.generator import renderer
from moee.emotions import ACTION_UNITS, BASIC_EMOTIONS, EMOTION_AU_PROTOTYPES, EMOTION_CLASSES
from moee.evaluation.probes import load_probes

UNSEEN_POPULATION = 777
"""SynthEmo's population seed for the renders: the shards and the probes draw population 0."""


def au_vector(units: dict[str, float]) -> np.ndarray:
    """(17,) AU intensities from ``{"AU6": 0.9, ...}``."""
    vector = np.zeros(len(ACTION_UNITS), np.float32)
    for unit, value in units.items():
        vector[ACTION_UNITS.index(unit)] = value
    return vector


def variants(emotion: str) -> dict[str, dict[str, float]]:
    """The prototype, the prototype without each unit, and each unit alone."""
    prototype = EMOTION_AU_PROTOTYPES[emotion]
    out = {"prototype": prototype}
    if len(prototype) > 1:
        out |= {f"without {u}": {k: v for k, v in prototype.items() if k != u} for u in prototype}
        out |= {f"{u} alone": {u: v} for u, v in prototype.items()}
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
    probes = load_probes().eval()
    faces = [renderer(UNSEEN_POPULATION, i, size) for i in range(people)]
    print(f"{people} unseen identities, speech jaw {jaw}; p = the probes' mean probability "
          "of the emotion")
    for emotion in BASIC_EMOTIONS:
        for name, units in variants(emotion).items():
            frames = np.stack([face.render(au_vector(units), (jaw, 0.0, 0.0))[0]
                               for face in faces])
            probabilities = probes.emotion_logits(from_numpy_frames(frames)).softmax(-1)
            counts = np.bincount(probabilities.argmax(-1).numpy(), minlength=len(EMOTION_CLASSES))
            read = ", ".join(f"{EMOTION_CLASSES[i]} {counts[i]}"
                             for i in np.argsort(-counts)[:3] if counts[i])
            p = float(probabilities[:, EMOTION_CLASSES.index(emotion)].mean())
            print(f"{emotion:10s} {name:14s} p {p:.2f}   read: {read}")


if __name__ == "__main__":
    CLI(main, as_positional=False)
