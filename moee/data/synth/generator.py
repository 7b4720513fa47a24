"""SynthEmo clips and shards: emotion dynamics, speech, head motion, text and MNS references.

Everything is a pure function of ``(seed, identity index, clip index)``: the same seed gives
byte-identical frames and audio in any process and with any number of workers.
Splits use disjoint identities; each split folder gets its shards and a ``manifest.json``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from moee.data.shards import Clip, ClipMeta, ShardWriter, sample_key, write_manifest
from moee.data.synth.audio import synthesize_speech
from moee.data.synth.face import MAX_SIZE, MIN_SIZE, FaceRenderer, combine_speech
from moee.data.synth.identity import Identity, sample_identity
from moee.data.synth.text import describe_aus
from moee.emotions import ACTION_UNITS, EMOTION_CLASSES, NEUTRAL, parse_emotion

GENERATOR_VERSION = "synthemo-2"
"""Changes whenever the same seed would give different clips: pixels, audio or labels."""
RENDERER_VERSION = "synthemo-1"
"""Changes whenever the face renderer, the apex AUs or the head motion model would draw other
pixels (what the probes are trained on; clip assembly changes only :data:`GENERATOR_VERSION`)."""
SPLITS = ("train", "val", "test")
MNS_REFERENCES = 2
_BLINK = np.array([0.35, 0.9, 1.0, 0.6, 0.2], np.float32)
_AU45 = ACTION_UNITS.index("AU45")


@functools.lru_cache(maxsize=64)
def renderer(seed: int, index: int, size: int) -> FaceRenderer:
    """The (cached) renderer of identity ``index`` of population ``seed`` at ``size`` px."""
    return FaceRenderer(sample_identity(seed, index), size)


def clip_emotion(identity_index: int, clip_index: int) -> str:
    """The emotion class of a clip: every run of 11 clips of an identity covers all classes."""
    return EMOTION_CLASSES[(clip_index + identity_index) % len(EMOTION_CLASSES)]


def apex_aus(emotion: str, intensity: float, rng: np.random.Generator) -> np.ndarray:
    """Prototype AUs of an emotion at ``intensity`` with per-clip natural variation."""
    proto = np.array(parse_emotion(f"{emotion}@{intensity:.6f}").au_vector(), np.float32)
    active = proto > 0
    varied = proto * rng.normal(1.0, 0.12, proto.shape) + active * rng.normal(0, 0.04, proto.shape)
    varied += ~active * (rng.uniform(0, 1, proto.shape) < 0.08) * rng.uniform(0, 0.2, proto.shape)
    varied[_AU45] = 0.0
    return np.clip(varied, 0, 1).astype(np.float32)


def emotion_dynamics(apex: np.ndarray, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(T, 17) AUs rising from a low start to ``apex`` (smooth onset), then holding, with blinks."""
    t = np.arange(num_frames, dtype=np.float32)
    start, onset = rng.uniform(0, 0.2), rng.uniform(0, 0.25) * num_frames
    length = max(2.0, rng.uniform(0.15, 0.4) * num_frames)
    x = np.clip((t - onset) / length, 0, 1)
    ramp = start + (1 - start) * x * x * (3 - 2 * x)
    wobble = 1 + 0.04 * np.sin(2 * np.pi * t / rng.uniform(20, 60) + rng.uniform(0, 6.3))
    aus = np.clip(apex[None] * (ramp * wobble)[:, None], 0, 1).astype(np.float32)
    frame = int(rng.integers(0, 40))
    while frame < num_frames:
        span = aus[frame:frame + len(_BLINK), _AU45]
        aus[frame:frame + len(_BLINK), _AU45] = np.maximum(span, _BLINK[:len(span)])
        frame += int(rng.integers(40, 110))
    return aus


def head_motion(num_frames: int, rng: np.random.Generator, energy: float = 1.0) -> np.ndarray:
    """(T, 3) yaw, pitch, roll in radians: slow sways plus a few nods."""
    t = np.arange(num_frames, dtype=np.float32) / 25.0
    pose = np.zeros((num_frames, 3), np.float32)
    for axis, amplitude in enumerate((0.1, 0.05, 0.05)):
        for _ in range(2):
            freq, phase = rng.uniform(0.1, 0.6), rng.uniform(0, 2 * np.pi)
            pose[:, axis] += amplitude * energy * rng.uniform(0.3, 1) * np.sin(
                2 * np.pi * freq * t + phase)
    for centre in rng.uniform(0, t[-1] + 1e-3, int(rng.integers(0, 3))):
        pose[:, 1] += 0.06 * energy * np.exp(-0.5 * ((t - centre) / 0.12) ** 2)
    return pose


@dataclass(frozen=True)
class ClipConfig:
    """What a clip looks like: size in px, length in frames, the population seed, and how much
    the head sways (1: talking-show motion; MEAD-like studio recordings hold the head stiller)."""

    seed: int = 0
    size: int = 64
    num_frames: int = 50
    head_motion: float = 1.0

    def __post_init__(self) -> None:
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"size must be in {MIN_SIZE}..{MAX_SIZE} px, got {self.size}")
        if self.num_frames < 1:
            raise ValueError(f"frames must be at least 1, got {self.num_frames}")
        if self.head_motion < 0:
            raise ValueError(f"head_motion must be 0 (a still head) or more, got "
                             f"{self.head_motion}")


def make_clip(config: ClipConfig, identity_index: int, clip_index: int,
              split: str = "train", emotion: str | None = None) -> Clip:
    """Render one SynthEmo clip (frames, speech, AUs, landmarks, text, MNS references)."""
    rng = np.random.default_rng([config.seed, identity_index, clip_index, 1])
    emotion = emotion or clip_emotion(identity_index, clip_index)
    cond = parse_emotion(emotion)
    face = renderer(config.seed, identity_index, config.size)
    ident: Identity = face.identity
    intensity = 0.0 if emotion == NEUTRAL else float(rng.uniform(0.55, 1.0))
    apex = apex_aus(emotion, intensity, rng)
    aus = emotion_dynamics(apex, config.num_frames, rng)
    speech = synthesize_speech(config.num_frames, f"{emotion}@{max(intensity, 0):.6f}", rng,
                               pitch_hz=ident.pitch_hz,
                               formant_scale=1.15 if ident.pronoun == "she" else 1.0)
    poses = head_motion(config.num_frames, rng, config.head_motion)
    gaze = (float(rng.uniform(-0.4, 0.4)), float(rng.uniform(-0.3, 0.3)))
    frames, landmarks = face.render_sequence(aus, speech.visemes, poses, gaze)
    refs, ref_emotions = mns_references(config, identity_index, emotion, rng, poses.mean(0))
    meta = ClipMeta(
        identity=ident.name, emotion=emotion, weights=list(cond.weights), intensity=intensity,
        num_frames=config.num_frames, size=config.size,
        text=describe_aus(apex, emotion, ident.possessive, rng), source="synthemo", split=split,
        extra={
            "generator_version": GENERATOR_VERSION,
            "viseme": np.round(speech.visemes, 3).tolist(),
            "mns_emotions": ref_emotions,
        },
    )
    return Clip(
        key=sample_key(ident.name, f"clip{clip_index:04d}"), meta=meta, frames=frames,
        audio=speech.audio, aus=combine_speech(aus, speech.visemes), landmarks=landmarks,
        extras={"mnsref.npy": refs[0], "mnslmk.npy": refs[1].astype(np.float16)},
    )


def mns_references(config: ClipConfig, identity_index: int, emotion: str,
                   rng: np.random.Generator, pose: np.ndarray,
                   ) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """Frames of the same identity for masked-noisy sampling: the first neutral (what an
    animation's portrait shows), the others with other emotions. Each is drawn at ``pose``
    (yaw, pitch, roll: the clip's mean head pose, as another recording of the person in the
    same seat would be), so that the reference lines up with the clip's frames.

    Returns ``((R, H, W, 3) uint8 frames, (R, 68, 2) landmarks)`` and the R emotion names.
    """
    face = renderer(config.seed, identity_index, config.size)
    others = [e for e in EMOTION_CLASSES if e not in (emotion, NEUTRAL)]
    names = [NEUTRAL] * (emotion != NEUTRAL)
    names += [str(n) for n in rng.choice(others, MNS_REFERENCES - len(names), replace=False)]
    frames, marks = [], []
    for name in names:
        level = 0.0 if name == NEUTRAL else rng.uniform(0.6, 1.0)
        viseme = (rng.uniform(0, 0.5), rng.uniform(0, 0.5), rng.uniform(0, 0.5))
        frame, lmk = face.render(apex_aus(name, level, rng), viseme, pose)
        frames.append(frame)
        marks.append(lmk)
    return (np.stack(frames), np.stack(marks)), names


def split_identities(counts: Sequence[int]) -> dict[str, range]:
    """Disjoint identity index ranges of the train, val and test splits."""
    ranges, start = {}, 0
    for split, count in zip(SPLITS, counts):
        ranges[split] = range(start, start + count)
        start += count
    return ranges


def _write_shard(args: tuple) -> list:
    config, folder, shard_index, split, jobs = args
    with ShardWriter(folder, max_samples=len(jobs), start_index=shard_index) as writer:
        for identity_index, clip_index in jobs:
            writer.write(make_clip(config, identity_index, clip_index, split))
    return writer.infos


def generate_dataset(out: str | os.PathLike, config: ClipConfig = ClipConfig(),
                     identities: Sequence[int] = (40, 8, 8), clips_per_identity: int = 11,
                     shard_size: int = 32, workers: int = 1, progress: bool = True) -> Path:
    """Write ``out/{train,val,test}`` shard folders with manifests; return ``out``.

    Clips are shuffled across shards with the seed, so every shard mixes identities and emotions.
    """
    out = Path(out)
    tasks = []
    for split, ids in split_identities(identities).items():
        jobs = [(i, c) for i in ids for c in range(clips_per_identity)]
        order = np.random.default_rng([config.seed, SPLITS.index(split)]).permutation(len(jobs))
        jobs = [jobs[i] for i in order]
        for shard, start in enumerate(range(0, len(jobs), shard_size)):
            tasks.append((config, out / split, shard, split, jobs[start:start + shard_size]))
    infos: dict[str, list] = {split: [] for split in SPLITS}
    bar = tqdm(total=sum(len(t[4]) for t in tasks), unit="clip", disable=not progress)
    with ProcessPoolExecutor(workers) if workers > 1 else _Serial() as pool:
        for task, written in zip(tasks, pool.map(_write_shard, tasks)):
            infos[task[3]] += written
            bar.update(len(task[4]))
    bar.close()
    for split in SPLITS:
        write_manifest(out / split, infos[split], generator=GENERATOR_VERSION, seed=config.seed,
                       size=config.size, split=split, source="synthemo")
    return out


class _Serial:
    """A stand-in for a process pool that maps in this process."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc) -> None:
        return None

    @staticmethod
    def map(fn, items):
        return map(fn, items)
