"""Text descriptions of SynthEmo clips, paraphrased from their action units.

Each active AU (or AU pair) has several phrasings and three strength adverbs; a clip picks
phrasings, their order and a sentence frame at random, the way the paper paraphrases AU
descriptions ("her brows are raised and pulled together, lip corners pulled down").
"""

from __future__ import annotations

import re

import numpy as np

from moee.emotions import ACTION_UNITS, NEUTRAL

_ACTIVE = 0.2
_PAIRS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("AU1", "AU2", "AU4"): ("{p} brows are raised and pulled together",
                            "{p} brows lift and knit in the middle"),
    ("AU1", "AU2"): ("{p} brows are {a}raised", "{p} eyebrows go {a}up", "{p} brows arch {a}high"),
    ("AU1", "AU4"): ("the inner corners of {p} brows are raised and drawn together",
                     "{p} brows slant {a}upward in the middle"),
    ("AU25", "AU26"): ("{p} jaw drops {a}open", "{p} mouth falls {a}open",
                       "{p} mouth hangs {a}open"),
}
_SINGLE: dict[str, tuple[str, ...]] = {
    "AU1": ("the inner ends of {p} brows are {a}raised", "{p} inner brows lift {a}"),
    "AU2": ("the outer ends of {p} brows are {a}raised", "{p} outer brows lift {a}"),
    "AU4": ("{p} brows are {a}lowered and drawn together", "{p} brows {a}knit into a frown",
            "{p} brow is {a}furrowed"),
    "AU5": ("{p} eyes are {a}wide open", "{p} upper lids are {a}raised", "{p} eyes widen {a}"),
    "AU6": ("{p} cheeks are {a}raised", "{p} cheeks lift {a}", "{p} eyes crinkle {a}"),
    "AU7": ("{p} lids are {a}tightened", "{p} eyes narrow {a}"),
    "AU9": ("{p} nose is {a}wrinkled", "{p} nose wrinkles {a}"),
    "AU10": ("{p} upper lip is {a}raised", "{p} upper lip curls {a}up"),
    "AU12": ("{p} lip corners are {a}pulled up", "{p} mouth curves {a}into a smile",
             "{p} lips stretch {a}into a smile"),
    "AU15": ("{p} lip corners are {a}pulled down", "the corners of {p} mouth turn {a}down"),
    "AU16": ("{p} lower lip is {a}pulled down", "{p} lower lip drops {a}"),
    "AU17": ("{p} chin is {a}pushed up", "{p} chin puckers {a}"),
    "AU20": ("{p} lips are {a}stretched sideways", "{p} mouth stretches {a}wide"),
    "AU23": ("{p} lips are {a}pressed tight", "{p} lips tighten {a}"),
    "AU25": ("{p} lips are {a}parted", "{p} lips part {a}"),
    "AU26": ("{p} jaw is {a}dropped", "{p} jaw falls {a}open"),
}
_ADVERBS = (("slightly ", "a little ", "faintly "), ("", "clearly ", "visibly "),
            ("strongly ", "markedly ", "fully "))
_FRAMES = (
    "{s}.", "A face where {s}.", "{s}, as {o} speaks.", "While talking, {s}.",
    "{s}; {o} looks {e}.", "Looking {e}: {s}.", "{o} looks {e}: {s}.",
)
_ADJECTIVE = {
    NEUTRAL: "calm", "angry": "angry", "disgusted": "disgusted", "fear": "afraid",
    "happy": "happy", "sad": "sad", "surprised": "surprised",
}
_SUBJECT = {"her": "she", "his": "he", "their": "they"}


def _emotion_word(emotion: str) -> str:
    words = emotion.split(" ")
    return " ".join(_ADJECTIVE.get(w, w) for w in words)


def describe_aus(aus, emotion: str, possessive: str, rng: np.random.Generator) -> str:
    """A one-sentence description of apex AU intensities (17, in ACTION_UNITS order).

    ``possessive`` is ``her``, ``his`` or ``their``; ``emotion`` (canonical name) may be named
    in some sentence frames.
    """
    level = {au: float(v) for au, v in zip(ACTION_UNITS, aus) if au != "AU45" and v >= _ACTIVE}
    phrases = []
    for group, options in [*_PAIRS.items(), *(((k,), v) for k, v in _SINGLE.items())]:
        if all(au in level for au in group):
            strength = float(np.mean([level.pop(au) for au in group]))
            adverb = rng.choice(_ADVERBS[min(2, int(strength * 3))])
            phrases.append(str(rng.choice(options)).format(p=possessive, a=adverb))
    if not phrases:
        phrases = [str(rng.choice((f"{possessive} face is relaxed", f"{possessive} face is at rest",
                                   f"{possessive} expression is neutral")))]
    order = rng.permutation(len(phrases))
    phrases = [phrases[i] for i in order]
    body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    frame = str(rng.choice(_FRAMES))
    text = frame.format(s=body, o=_SUBJECT.get(possessive, "they"),
                        e=_emotion_word(emotion))
    text = re.sub(r"\s+([,.;:])", r"\1", re.sub(r"\s+", " ", text)).strip()
    return text[0].upper() + text[1:]
