"""The demo's emotion forms → the condition string ``moee animate --emotion`` takes.

Each form of the page has one builder here; none of them needs gradio, and each returns text
that :func:`moee.emotions.parse_emotion_timeline` reads (or rejects with a one-line message,
shown by :func:`check_condition`).
"""

from __future__ import annotations

from collections.abc import Sequence

from moee.emotions import (
    ACTION_UNIT_DESCRIPTIONS,
    ACTION_UNITS,
    BASIC_EMOTIONS,
    COMPOUND_EMOTIONS,
    NEUTRAL,
    EmotionSpecError,
    parse_emotion_timeline,
)

LABELS: tuple[str, ...] = (NEUTRAL, *BASIC_EMOTIONS, *COMPOUND_EMOTIONS)
"""The named emotions of the label form: neutral, the six basic, the four compounds."""

FORMS: tuple[str, ...] = ("label", "mix", "text", "action units", "speech", "timeline")
"""The emotion forms of the page, in tab order."""

TIMELINE_COLUMNS: tuple[str, str] = ("time (s)", "emotion")


def number(value: float) -> str:
    """A slider value as the shortest text that keeps 3 decimals (``0.7``, ``1``, ``0.125``)."""
    return f"{round(float(value), 3):g}"


def label_condition(name: str, intensity: float = 1.0) -> str:
    """``happy``, ``sad@0.4``, ``happily surprised``; neutral has no intensity."""
    if name == NEUTRAL or float(intensity) >= 1:
        return name
    return f"{name}@{number(intensity)}"


def weighted(names: Sequence[str], values: Sequence[float]) -> list[str]:
    """``name:value`` of every value above zero, in the order given."""
    return [f"{name}:{number(value)}" for name, value in zip(names, values)
            if round(float(value), 3) > 0]


def mix_condition(weights: Sequence[float]) -> str:
    """Six basic-emotion weights → ``happy:0.7,surprised:0.3`` (``neutral`` when all are 0)."""
    return ",".join(weighted(BASIC_EMOTIONS, weights)) or NEUTRAL


def action_unit_condition(intensities: Sequence[float]) -> str:
    """One intensity per :data:`~moee.emotions.ACTION_UNITS` → ``AU6:0.8,AU12:1``."""
    return ",".join(weighted(ACTION_UNITS, intensities)) or NEUTRAL


def text_condition(description: str) -> str:
    """A free-text description → ``text:...`` (line breaks become spaces)."""
    return "text:" + " ".join(str(description or "").split())


def timeline_condition(rows: Sequence[Sequence]) -> str:
    """Rows of ``(seconds, emotion)`` → ``0s:neutral,2s:happy``; rows without an emotion are
    skipped. Raises :class:`EmotionSpecError` for a time that is not a number."""
    entries = []
    for index, row in enumerate(rows, 1):
        seconds, emotion = (list(row) + ["", ""])[:2]
        emotion = str(emotion if emotion is not None else "").strip()
        if not emotion:
            continue
        try:
            entries.append(f"{number(seconds)}s:{emotion}")
        except (TypeError, ValueError):
            raise EmotionSpecError(f"the time of timeline row {index} must be a number of "
                                   f"seconds, got {str(seconds).strip()!r}") from None
    return ",".join(entries) or NEUTRAL


def check_condition(spec: str) -> str:
    """One line saying what ``spec`` means, or why it cannot be read."""
    try:
        entries = parse_emotion_timeline(spec)
    except EmotionSpecError as error:
        return f"✗ {error}"
    if len(entries) > 1:
        return f"✓ a timeline of {len(entries)} entries"
    condition = entries[0][1]
    if condition.kind == "basic":
        return f"✓ {condition.name} at intensity {number(condition.intensity)}: its expert alone"
    if condition.kind == "compound":
        total = sum(condition.weights)
        parts = sorted(((w / total, n) for n, w in zip(BASIC_EMOTIONS, condition.weights) if w),
                       reverse=True)
        return (f"✓ the compound {condition.name}: "
                + " and ".join(f"the {name} expert at {number(share)}" for share, name in parts))
    if condition.kind == "mixture":
        return "✓ a mix: the experts weighted by it, replacing the global gate"
    meaning = {"au": "action units",
               "text": "a text description", "speech": "the speech's own tone",
               "neutral": "neutral"}[condition.kind]
    return f"✓ {meaning}, through the learned gates"


def action_unit_label(au: str) -> str:
    """``AU6 cheek raiser``: a slider's label."""
    return f"{au} {ACTION_UNIT_DESCRIPTIONS[au]}"
