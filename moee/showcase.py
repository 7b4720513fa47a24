"""The quickstart's held-out videos: which to make, and what the SynthEmo probes read in them.

Every test identity is animated from a **neutral** portrait (its neutral clip's frame with the
mouth most closed), sampled from pure noise, under each kind of condition:

=========  ===============================================  ==================================
kind       condition                                        speech, and what it must read as
=========  ===============================================  ==================================
basic      each basic label                                 that emotion's clip: the label
compound   each compound name                               that compound's clip: the compound
text       ``text:`` + each emotion clip's own description  that clip: its emotion
speech     ``speech``                                       each basic emotion's clip: its emotion
=========  ===============================================  ==================================

A video counts as right only if the probes see a face in it, its nearest portrait by identity
is its own, and the frame-averaged emotion is the one asked (:class:`ProbeJudge`); lip sync is
the correlation of the probes' mouth opening with the speech clip's ground-truth mouth track,
over all videos and per the speech clip's emotion (an expression that opens the jaw, as
surprise does, moves the truth's mouth as much as the speech).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from moee.data.media import SAMPLES_PER_FRAME
from moee.data.shards import Clip, ShardError, decode_clip, iter_raw_samples, shard_urls
from moee.data.synth.face import mouth_opening_from_landmarks
from moee.data.synth.sheet import with_header
from moee.emotions import BASIC_EMOTIONS, COMPOUND_EMOTIONS, NEUTRAL
from moee.evaluation.probe_judge import ProbeJudge, VideoReading, lip_sync_correlation

KINDS = ("basic", "compound", "text", "speech")
"""The condition kinds, in report order."""
READ_KINDS = {"basic": "basic labels", "speech": "speech voices"}
"""The kinds whose reads are reported per asked emotion (what each one's videos read as), and
their name in the report."""
SHEET_LABELS = 84
"""Width in pixels of the emotion-label column on the left of :func:`showcase_sheet`."""


@dataclass
class Person:
    """A held-out identity: its neutral portrait and its clips by emotion."""

    identity: str
    portrait: np.ndarray  # (H, W, 3) uint8
    clips: dict[str, Clip]


@dataclass
class PlannedVideo:
    """One video to make: whose, which condition, which clip's speech, what it must read as."""

    person: Person
    kind: str
    condition: str
    speech_clip: Clip
    asked: str

    @property
    def name(self) -> str:
        """File stem: ``<identity>_<kind>_<asked emotion>``."""
        return f"{self.person.identity}_{self.kind}_{self.asked.replace(' ', '-')}"


def held_out_people(folder: str | Path, limit: int | None = None) -> list[Person]:
    """The identities of a SynthEmo split that have a clip of every emotion class."""
    clips: dict[str, dict[str, Clip]] = defaultdict(dict)
    for url in shard_urls(folder):
        for raw in iter_raw_samples(url):
            clip = decode_clip(raw)
            clips[clip.meta.identity].setdefault(clip.meta.emotion, clip)
    people = []
    for identity in sorted(clips):
        own = clips[identity]
        if NEUTRAL not in own or not all(e in own for e in (*BASIC_EMOTIONS, *COMPOUND_EMOTIONS)):
            continue
        neutral = own[NEUTRAL]
        still = int(mouth_opening_from_landmarks(neutral.landmarks).argmin())
        people.append(Person(identity, neutral.frames[still], own))
    if not people:
        raise ShardError(f"no identity in {str(folder)!r} has a clip of every emotion class: "
                         "write the split with `python -m moee synth` (11 clips per identity)")
    return people[:limit]


def plan_videos(people: Iterable[Person], kinds: Iterable[str] = KINDS) -> list[PlannedVideo]:
    """Every (person, condition) video of the module table, for the given kinds."""
    plan = []
    for person in people:
        for kind in kinds:
            if kind == "compound":
                plan += [PlannedVideo(person, kind, c, person.clips[c], c)
                         for c in COMPOUND_EMOTIONS]
                continue
            for emotion in BASIC_EMOTIONS:
                clip = person.clips[emotion]
                condition = {"basic": emotion, "text": f"text:{clip.meta.text}",
                             "speech": "speech"}[kind]
                plan.append(PlannedVideo(person, kind, condition, clip, emotion))
    return plan


def speech_of(video: PlannedVideo, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``frames`` frames' audio of the video's speech clip and their ground-truth
    mouth opening."""
    clip = video.speech_clip
    return (clip.audio[: frames * SAMPLES_PER_FRAME],
            mouth_opening_from_landmarks(clip.landmarks[:frames]))


@dataclass
class ShowcaseScores:
    """What the probes read in a set of made videos (see the module docstring)."""

    emotion: dict[str, tuple[int, int]]  # kind -> (right, videos)
    identity: tuple[int, int]
    lip_sync: float
    lip_sync_by_emotion: dict[str, float]  # the speech clip's emotion -> r of its videos
    reads: dict[str, dict[str, dict[str, int]]]  # kind of READ_KINDS -> asked -> {read: count}

    def lines(self) -> list[str]:
        """The report, one figure per line."""
        def share(hits: tuple[int, int]) -> str:
            return f"{hits[0]}/{hits[1]} ({hits[0] / max(hits[1], 1):.0%})"

        def label_reads(asked: str, reads: dict[str, int]) -> str:
            misses = ", ".join(f"{read} {n}" for read, n in reads.items() if read != asked)
            hits = f"{asked} {reads.get(asked, 0)}/{sum(reads.values())}"
            return f"{hits} ({misses})" if misses else hits

        emotion = ", ".join(f"{kind} {share(h)}" for kind, h in self.emotion.items())
        return [f"emotion read as asked (on a face of the right person): {emotion}",
                f"identity: own portrait nearest in {share(self.identity)} videos",
                f"lip sync: mouth opening vs ground truth r = {self.lip_sync:.2f}",
                "lip sync by the speech clip's emotion: " + ", ".join(
                    f"{e} {r:.2f}" for e, r in self.lip_sync_by_emotion.items()),
                *(f"{title} read as (misses in brackets): " + ", ".join(
                    label_reads(asked, reads) for asked, reads in self.reads[kind].items())
                  for kind, title in READ_KINDS.items() if kind in self.reads)]

    def as_dict(self) -> dict:
        """JSON-ready figures."""
        return {"emotion_accuracy": {k: h[0] / max(h[1], 1) for k, h in self.emotion.items()},
                "identity_accuracy": self.identity[0] / max(self.identity[1], 1),
                "lip_sync_r": self.lip_sync, "lip_sync_r_by_emotion": self.lip_sync_by_emotion,
                **{f"{kind}_reads": reads for kind, reads in self.reads.items()}}


def read_as(judge: ProbeJudge, reading: VideoReading, asked: str, portrait: str) -> str:
    """What a video made from ``portrait`` reads as: ``asked`` when the judge counts it,
    else ``"not a face"``, ``"another person"`` or the emotion the probes read (so a video
    counts as ``asked`` exactly when the judge says it reads so)."""
    if judge.reads_as(reading, asked, portrait):
        return asked
    if not reading.is_face:
        return "not a face"
    if reading.identity != portrait:
        return "another person"
    return reading.emotion if reading.emotion != asked else "refused by the judge"


def score_videos(judge: ProbeJudge, made: list[tuple[PlannedVideo, np.ndarray]]) -> ShowcaseScores:
    """Read every made video ``(plan, frames (T, H, W, 3) uint8)`` with the probes."""
    emotion: dict[str, list[int]] = {}
    identity = [0, 0]
    mouths: dict[str, list[np.ndarray]] = defaultdict(list)
    targets: dict[str, list[np.ndarray]] = defaultdict(list)
    reads_by_kind: dict[str, dict[str, dict[str, int]]] = {}
    for video, frames in made:
        reading = judge.read(frames, video.person.identity)
        read = read_as(judge, reading, video.asked, video.person.identity)
        hits = emotion.setdefault(video.kind, [0, 0])
        hits[0] += read == video.asked
        hits[1] += 1
        if video.kind in READ_KINDS:
            reads = reads_by_kind.setdefault(video.kind, {}).setdefault(video.asked, {})
            reads[read] = reads.get(read, 0) + 1
        identity[0] += reading.is_face and reading.identity == video.person.identity
        identity[1] += 1
        mouths[video.speech_clip.meta.emotion].append(reading.mouth)
        targets[video.speech_clip.meta.emotion].append(speech_of(video, len(frames))[1])
    pooled = lip_sync_correlation([*chain(*mouths.values())], [*chain(*targets.values())])
    return ShowcaseScores({k: tuple(v) for k, v in emotion.items()}, tuple(identity), pooled,
                          {e: lip_sync_correlation(mouths[e], targets[e]) for e in mouths},
                          {kind: {asked: dict(sorted(reads.items(), key=lambda item: -item[1]))
                                  for asked, reads in by_asked.items()}
                           for kind, by_asked in reads_by_kind.items()})


def showcase_sheet(made: list[tuple[PlannedVideo, np.ndarray]], identities: int = 2,
                   frames: int = 4) -> np.ndarray:
    """Contact sheet of the basic and compound videos: one row per emotion (the neutral
    portrait first), ``frames`` evenly spaced frames ending at the last for each of the first
    ``identities``."""
    by_person: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    portraits = {}
    for video, video_frames in made:
        if video.kind in ("basic", "compound"):
            by_person[video.person.identity][video.asked] = video_frames
            portraits[video.person.identity] = video.person.portrait
    people = list(by_person)[:identities]
    emotions = [NEUTRAL, *BASIC_EMOTIONS, *COMPOUND_EMOTIONS]
    rows = []
    for emotion in emotions:
        cells = []
        for person in people:
            if emotion == NEUTRAL:
                cells += [portraits[person]] * frames
                continue
            video = by_person[person].get(emotion)
            if video is None:
                cells += [np.zeros_like(portraits[person])] * frames
                continue
            # evenly spaced, the last frame included (one frame: the last, where the emotion
            # has set in after its onset)
            picks = np.linspace(len(video) - 1, 0, frames)[::-1].round().astype(int)
            cells += list(video[picks])
        rows.append(np.concatenate(cells, 1))
    names = ["portrait" if emotion == NEUTRAL else emotion for emotion in emotions]
    return with_row_labels(np.concatenate(rows, 0), names)


def with_row_labels(grid: np.ndarray, names: list[str]) -> np.ndarray:
    """``grid`` (H, W, 3) uint8 of ``len(names)`` equal rows, right of a white column
    (:data:`SHEET_LABELS` px) naming each row at its top."""
    size = grid.shape[0] // len(names)
    labels = np.full((grid.shape[0], SHEET_LABELS, 3), 255, np.uint8)
    for row, name in enumerate(names):
        label = with_header(np.zeros((0, SHEET_LABELS, 3), np.uint8), [name], SHEET_LABELS)
        labels[row * size: row * size + label.shape[0]] = label
    return np.concatenate([labels, grid], 1)
