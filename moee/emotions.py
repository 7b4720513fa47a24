"""The one emotion vocabulary of MoEE, and the parser for every way a user names a condition.

``BASIC_EMOTIONS`` fixes the expert index everywhere. A condition is written as:

=============================  ===============================================
``"sad"``                      a basic emotion (only that expert runs)
``"happily surprised"``        a compound emotion: ``<adverb> <basic>``
``"happy:0.7,surprised:0.3"``  a weighted mix (weights normalised to sum 1)
``"sad@0.5"``                  any label or mix at an intensity in [0, 1]
``"AU6:0.8,AU12:1.0"``         facial action-unit intensities in [0, 1]
``"text:a faint sad smile"``   a free-text description
``"speech"``                   no explicit condition: the speech's own tone
``"neutral"``                  no emotion
=============================  ===============================================

``parse_emotion`` turns each into one :class:`EmotionCondition`;
``parse_emotion_timeline`` reads ``"0s:neutral,3s:happy,6s:sadly surprised"``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from moee.errors import BadInputError

BASIC_EMOTIONS: tuple[str, ...] = ("angry", "disgusted", "fear", "happy", "sad", "surprised")
"""The six basic emotions; this order is the expert index everywhere."""
NUM_EXPERTS = len(BASIC_EMOTIONS)
NEUTRAL = "neutral"

ADVERBS: dict[str, str] = {
    "angrily": "angry",
    "disgustedly": "disgusted",
    "fearfully": "fear",
    "happily": "happy",
    "sadly": "sad",
    "surprisedly": "surprised",
}
"""Adverb forms of the basic emotions, used to name compounds (``"sadly surprised"``)."""

ALIASES: dict[str, str] = {
    "anger": "angry",
    "disgust": "disgusted",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "happiness": "happy",
    "joy": "happy",
    "sadness": "sad",
    "surprise": "surprised",
    "calm": NEUTRAL,
}
"""Other common names of the basic emotions (the names real data sets use)."""

CLASSIFIER_LABELS: dict[str, str] = {
    "neu": NEUTRAL,
    "hap": "happy",
    "exc": "happy",  # IEMOCAP's "excited", merged into happy as the SUPERB task does
    "ang": "angry",
    "fea": "fear",
    "dis": "disgusted",
    "sur": "surprised",
}
"""The abbreviated class names of emotion-recognition checkpoints (SUPERB's IEMOCAP classes:
``neu``, ``hap``, ``ang``, ``sad``), for :func:`classifier_emotion_weights`."""

COMPOUND_WEIGHT = 0.6
"""Share of the head emotion in a compound; the adverb's emotion gets the rest."""

COMPOUND_EMOTIONS: dict[str, dict[str, float]] = {
    "angrily disgusted": {"disgusted": COMPOUND_WEIGHT, "angry": 1 - COMPOUND_WEIGHT},
    "sadly surprised": {"surprised": COMPOUND_WEIGHT, "sad": 1 - COMPOUND_WEIGHT},
    "sadly fearful": {"fear": COMPOUND_WEIGHT, "sad": 1 - COMPOUND_WEIGHT},
    "happily surprised": {"surprised": COMPOUND_WEIGHT, "happy": 1 - COMPOUND_WEIGHT},
}
"""The four compound emotions of the paper with their basic-emotion weights."""

ACTION_UNIT_DESCRIPTIONS: dict[str, str] = {
    "AU1": "inner brow raiser",
    "AU2": "outer brow raiser",
    "AU4": "brow lowerer",
    "AU5": "upper lid raiser",
    "AU6": "cheek raiser",
    "AU7": "lid tightener",
    "AU9": "nose wrinkler",
    "AU10": "upper lip raiser",
    "AU12": "lip corner puller",
    "AU15": "lip corner depressor",
    "AU16": "lower lip depressor",
    "AU17": "chin raiser",
    "AU20": "lip stretcher",
    "AU23": "lip tightener",
    "AU25": "lips part",
    "AU26": "jaw drop",
    "AU45": "blink",
}
"""The FACS action units MoEE uses, with the muscle movement each one names."""
ACTION_UNITS: tuple[str, ...] = tuple(ACTION_UNIT_DESCRIPTIONS)
NUM_ACTION_UNITS = len(ACTION_UNITS)
UPPER_FACE_UNITS = frozenset({"AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU45"})
"""FACS's upper-face action units (brows, lids, cheeks); the others move the lower face."""

EMOTION_AU_PROTOTYPES: dict[str, dict[str, float]] = {
    NEUTRAL: {},
    "angry": {"AU4": 1.0, "AU5": 0.6, "AU7": 0.8, "AU23": 0.9},
    "disgusted": {"AU9": 1.0, "AU10": 0.8, "AU15": 0.4, "AU17": 0.6},
    "fear": {"AU1": 0.9, "AU2": 0.7, "AU4": 0.6, "AU5": 1.0, "AU20": 0.9, "AU25": 0.6, "AU26": 0.4},
    "happy": {"AU6": 0.9, "AU12": 1.0, "AU25": 0.5},
    "sad": {"AU1": 1.0, "AU4": 0.7, "AU15": 1.0, "AU17": 0.5},
    "surprised": {"AU1": 1.0, "AU2": 1.0, "AU5": 0.9, "AU25": 0.7, "AU26": 1.0},
    "angrily disgusted": {"AU4": 0.9, "AU9": 0.6, "AU10": 1.0, "AU17": 0.8},
    "sadly surprised": {"AU1": 1.0, "AU4": 0.8, "AU25": 0.7, "AU26": 0.8},
    "sadly fearful": {"AU1": 1.0, "AU4": 0.9, "AU20": 0.8, "AU25": 0.6},
    "happily surprised": {"AU1": 0.9, "AU2": 0.8, "AU12": 1.0, "AU25": 0.9, "AU26": 0.5},
}
"""Prototype AU intensities per emotion (EMFACS; compounds after Du, Tao & Martinez 2014)."""

EMOTION_CLASSES: tuple[str, ...] = (NEUTRAL, *BASIC_EMOTIONS, *COMPOUND_EMOTIONS)
"""Every named emotion class: neutral, the six basic, the four compound (for classifiers)."""

ConditionKind = Literal["neutral", "basic", "compound", "mixture", "au", "text", "speech"]
SPEECH_SPECS = ("speech", "audio", "auto")


class EmotionSpecError(BadInputError, ValueError):
    """An emotion condition that cannot be parsed; the message says what is valid."""


def _valid_names() -> str:
    return ", ".join((NEUTRAL, *BASIC_EMOTIONS, *COMPOUND_EMOTIONS))


def _unit_interval(value: float, what: str) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise EmotionSpecError(f"{what} must be in [0, 1], got {value:g}")
    return value


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise EmotionSpecError(f"{what} must be a number, got {text!r}") from None


@dataclass(frozen=True)
class EmotionCondition:
    """One emotion condition in every form MoEE accepts.

    ``weights`` are the basic-emotion weights (length 6, summing to 1 for labels and mixes,
    zeros otherwise); ``intensity`` scales them; ``aus`` holds explicit AU intensities
    (length 17) for ``kind == "au"``; ``text`` the description for ``kind == "text"``.
    """

    kind: ConditionKind
    name: str
    weights: tuple[float, ...] = (0.0,) * NUM_EXPERTS
    intensity: float = 1.0
    aus: tuple[float, ...] | None = None
    text: str | None = None
    components: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def expert(self) -> int | None:
        """The expert index when exactly one basic emotion is asked for, else ``None``."""
        return BASIC_EMOTIONS.index(self.name) if self.kind == "basic" else None

    @property
    def has_label(self) -> bool:
        """Whether the condition carries basic-emotion weights (label, compound or mix)."""
        return self.kind in ("basic", "compound", "mixture")

    def label_vector(self) -> list[float]:
        """Basic-emotion weights times intensity: the label encoder's input (neutral = 0)."""
        return [w * self.intensity for w in self.weights]

    def compound_parts(self) -> tuple[EmotionCondition, ...]:
        """A compound's basic emotions as basic conditions at its intensity, the main emotion
        (the larger share) first: ``happily surprised`` → ``(surprised, happy)``."""
        if self.kind != "compound":
            raise ValueError(f"{self.name!r} is not a compound emotion")
        names = sorted(self.components, key=self.components.get, reverse=True)
        return tuple(EmotionCondition(kind="basic", name=name, weights=_weights_tuple({name: 1.0}),
                                      intensity=self.intensity, components={name: 1.0})
                     for name in names)

    def region_weights(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """How much each of a compound's parts (:meth:`compound_parts` order) draws the upper
        and the lower face: ``((upper_main, upper_adverb), (lower_main, lower_adverb))``.

        In each region the non-negative least-squares weights that rebuild the compound's AU
        prototype there from its parts' prototypes (FACS regions, :data:`UPPER_FACE_UNITS`):
        ``sadly surprised`` (AU1, AU4, AU25, AU26) takes its brows from sad and its open mouth
        from surprised, ``((0, 1.05), (0.87, 0))``. ``None`` for a compound without an AU
        prototype of its own (``happily sad``)."""
        if self.kind != "compound":
            raise ValueError(f"{self.name!r} is not a compound emotion")
        if self.name not in EMOTION_AU_PROTOTYPES:
            return None
        from scipy.optimize import nnls

        parts = [part.name for part in self.compound_parts()]
        weights = []
        for upper in (True, False):
            units = [au for au in ACTION_UNITS if (au in UPPER_FACE_UNITS) == upper]
            basis = np.array([[EMOTION_AU_PROTOTYPES[p].get(au, 0.0) for p in parts]
                              for au in units])
            target = np.array([EMOTION_AU_PROTOTYPES[self.name].get(au, 0.0) for au in units])
            weights.append(tuple(float(w) for w in nnls(basis, target)[0]))
        return weights[0], weights[1]

    def au_vector(self) -> list[float]:
        """AU intensities: the given ones, or the prototype blend expected for a label."""
        if self.aus is not None:
            return list(self.aus)
        blend = dict.fromkeys(ACTION_UNITS, 0.0)
        sources = {self.name: 1.0} if self.name in EMOTION_AU_PROTOTYPES else self.components
        for emotion, weight in sources.items():
            for au, value in EMOTION_AU_PROTOTYPES[emotion].items():
                blend[au] += weight * value * self.intensity
        return [min(1.0, blend[au]) for au in ACTION_UNITS]

    def to_dict(self) -> dict:
        """A JSON-ready description (used in shard metadata and result tables)."""
        return {
            "kind": self.kind,
            "name": self.name,
            "weights": list(self.weights),
            "intensity": self.intensity,
            "aus": None if self.aus is None else list(self.aus),
            "text": self.text,
        }


def canonical_emotion_name(name: str) -> str:
    """Map any spelling of a named emotion to its canonical name, or raise.

    Accepts case, underscores and hyphens freely, the aliases (``"anger"``, ``"fearful"``)
    and ``"<adverb> <basic>"`` compounds beyond the paper's four (``"happily sad"``).
    """
    words = re.sub(r"[_\-\s]+", " ", name.strip().lower()).split(" ")
    words = [ALIASES.get(w, w) for w in words if w]
    if len(words) == 1 and words[0] in (NEUTRAL, *BASIC_EMOTIONS):
        return words[0]
    if len(words) == 2 and words[0] in ADVERBS and words[1] in BASIC_EMOTIONS:
        head, modifier = words[1], ADVERBS[words[0]]
        if head != modifier:
            paper_name = next(
                (n for n, w in COMPOUND_EMOTIONS.items() if set(w) == {head, modifier}
                 and w[head] == COMPOUND_WEIGHT),
                None,
            )
            return paper_name or f"{words[0]} {head}"
    raise EmotionSpecError(
        f"unknown emotion {name.strip()!r}; valid: {_valid_names()}, any '<adverb> <basic>' "
        f"compound (adverbs: {', '.join(ADVERBS)}), or a mix like 'happy:0.7,surprised:0.3'"
    )


def emotion_components(name: str) -> dict[str, float]:
    """Basic-emotion weights of a canonical emotion name (empty for neutral)."""
    if name == NEUTRAL:
        return {}
    if name in BASIC_EMOTIONS:
        return {name: 1.0}
    if name in COMPOUND_EMOTIONS:
        return dict(COMPOUND_EMOTIONS[name])
    adverb, head = name.split(" ")
    return {head: COMPOUND_WEIGHT, ADVERBS[adverb]: 1 - COMPOUND_WEIGHT}


def classifier_emotion_weights(labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Basic-emotion weights of each class of an emotion classifier: (k 6), and the labels
    that name no emotion of MoEE's (their rows are zero, as neutral's is).

    Accepts every spelling :func:`canonical_emotion_name` does and the abbreviations of
    :data:`CLASSIFIER_LABELS`; a compound class gets its components' weights.
    """
    rows, unknown = [], []
    for label in labels:
        try:
            name = canonical_emotion_name(CLASSIFIER_LABELS.get(label.strip().lower(), label))
        except EmotionSpecError:
            name = NEUTRAL
            unknown.append(label)
        rows.append(_weights_tuple(emotion_components(name)))
    return np.asarray(rows, dtype=np.float32).reshape(len(labels), NUM_EXPERTS), unknown


def _weights_tuple(components: dict[str, float]) -> tuple[float, ...]:
    return tuple(components.get(e, 0.0) for e in BASIC_EMOTIONS)


def _parse_mixture(spec: str) -> dict[str, float]:
    raw: dict[str, float] = {}
    for part in spec.split(","):
        if ":" not in part:
            raise EmotionSpecError(
                f"mix entry {part.strip()!r} needs the form 'name:weight', "
                "as in 'happy:0.7,surprised:0.3'"
            )
        name, value = part.rsplit(":", 1)
        canonical = canonical_emotion_name(name)
        weight = _number(value.strip(), f"weight of {canonical!r}")
        if not math.isfinite(weight) or weight < 0:
            raise EmotionSpecError(f"weight of {canonical!r} must be ≥ 0, got {value.strip()}")
        if canonical in raw:
            raise EmotionSpecError(f"{canonical!r} appears twice in the mix {spec!r}")
        raw[canonical] = weight
    total = sum(raw.values())
    if total <= 0:
        raise EmotionSpecError(f"the weights of {spec!r} are all zero; give at least one > 0")
    return {name: weight / total for name, weight in raw.items()}


def _parse_action_units(spec: str) -> tuple[float, ...]:
    values = dict.fromkeys(ACTION_UNITS, 0.0)
    for part in spec.split(","):
        name, _, value = part.partition(":")
        match = re.fullmatch(r"au0*(\d+)", name.strip().lower())
        au = f"AU{match.group(1)}" if match else name.strip()
        if au not in values:
            raise EmotionSpecError(
                f"unknown action unit {name.strip()!r}; valid: {', '.join(ACTION_UNITS)}"
            )
        values[au] = _unit_interval(_number(value.strip() or "1", f"{au} intensity"), au)
    return tuple(values[au] for au in ACTION_UNITS)


def _label_condition(spec: str, intensity: float) -> EmotionCondition:
    if ":" in spec or "," in spec:
        mixture = _parse_mixture(spec)
        neutral_share = mixture.pop(NEUTRAL, 0.0)
        if not mixture:
            return EmotionCondition(kind="neutral", name=NEUTRAL, intensity=0.0)
        intensity *= 1.0 - neutral_share
        components: dict[str, float] = {}
        for name, weight in mixture.items():
            for basic, share in emotion_components(name).items():
                components[basic] = components.get(basic, 0.0) + weight * share / (
                    1.0 - neutral_share
                )
        if len(mixture) == 1:
            name = next(iter(mixture))
            kind = "basic" if name in BASIC_EMOTIONS else "compound"
        else:
            kind = "mixture"
            name = ",".join(f"{n}:{w / (1 - neutral_share):.3g}" for n, w in mixture.items())
        return EmotionCondition(
            kind=kind, name=name, weights=_weights_tuple(components), intensity=intensity,
            components=components,
        )
    name = canonical_emotion_name(spec)
    if name == NEUTRAL:
        return EmotionCondition(kind="neutral", name=NEUTRAL, intensity=0.0)
    components = emotion_components(name)
    kind = "basic" if name in BASIC_EMOTIONS else "compound"
    return EmotionCondition(
        kind=kind, name=name, weights=_weights_tuple(components), intensity=intensity,
        components=components,
    )


def parse_emotion(spec: str | EmotionCondition) -> EmotionCondition:
    """Parse any emotion specification (see the module docstring) into an EmotionCondition.

    Raises :class:`EmotionSpecError` with a one-line message that lists what is valid.
    """
    if isinstance(spec, EmotionCondition):
        return spec
    if not isinstance(spec, str):
        raise EmotionSpecError(f"an emotion must be given as text, got {type(spec).__name__}")
    text = spec.strip()
    if text.lower().startswith("text:"):
        description = text[5:].strip()
        if not description:
            raise EmotionSpecError("'text:' needs a description after it, e.g. 'text:a shy smile'")
        return EmotionCondition(kind="text", name="text", text=description, intensity=1.0)
    if text.lower() in SPEECH_SPECS:
        return EmotionCondition(kind="speech", name="speech")
    if not text:
        raise EmotionSpecError(f"empty emotion; valid: {_valid_names()}, 'speech' or 'text:...'")
    if re.match(r"\s*au\d", text, flags=re.IGNORECASE):
        return EmotionCondition(kind="au", name=text, aus=_parse_action_units(text))
    body, at, level = text.rpartition("@")
    if not at:
        body, level = text, "1"
    intensity = _unit_interval(_number(level.strip(), "intensity after '@'"), "intensity")
    return _label_condition(body, intensity)


_TIMELINE_ENTRY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*:(.+)$", flags=re.DOTALL)


def parse_emotion_timeline(spec: str) -> list[tuple[float, EmotionCondition]]:
    """Parse ``"0s:neutral,3s:happy,6s:sadly surprised"`` into sorted (seconds, condition).

    Entries are split at commas followed by ``<seconds>s:``, so each entry may itself be a mix
    (``"0s:happy:0.5,sad:0.5,4s:sad"``). A spec without times is one entry at 0 s.
    """
    parts = re.split(r",(?=\s*\d+(?:\.\d+)?s\s*:)", spec)
    if not _TIMELINE_ENTRY.match(parts[0]):
        if len(parts) > 1:
            raise EmotionSpecError(f"timeline {spec!r} must start with a time, like '0s:neutral'")
        return [(0.0, parse_emotion(spec))]
    entries = []
    for part in parts:
        seconds, condition = _TIMELINE_ENTRY.match(part).groups()
        entries.append((float(seconds), parse_emotion(condition)))
    times = [t for t, _ in entries]
    if times != sorted(times) or len(set(times)) != len(times):
        raise EmotionSpecError(f"timeline times must increase strictly, got {times}")
    if times[0] != 0.0:
        entries.insert(0, (0.0, parse_emotion(NEUTRAL)))
    return entries
