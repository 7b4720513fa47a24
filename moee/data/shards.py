"""The shard schema: one WebDataset sample per clip of one person, and its writer and reader.

A sample holds::

    __key__    "<identity>/<clip>" made tar-safe: "<identity>__<clip>"
    mp4        the square face crop, H.264, 25 fps (video only)
    wav        16 kHz mono PCM, aligned with the video (640 samples per frame)
    json       ClipMeta: identity, emotion name, weights, intensity, fps, frames, size, text, ...
    au.npy     (frames, 17) float16 AU intensities in [0, 1] (order of moee.emotions.ACTION_UNITS)
    lmk.npy    (frames, 68, 2) float16 landmarks in [0, 1], iBUG-68 order (x, y)
    ...        optional extras, e.g. "mnsref.npy" / "mnslmk.npy" (other-emotion references)

Shards are written as ``.tar`` files under a temporary name and renamed when complete, and
each shard folder has a ``manifest.json`` (samples, frames, identities, emotions, checksums).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import webdataset as wds

from moee.data.media import (
    AUDIO_RATE,
    SAMPLES_PER_FRAME,
    VIDEO_FPS,
    MediaError,
    encode_mp4,
    encode_wav,
    read_audio,
    read_video,
)
from moee.emotions import NUM_ACTION_UNITS
from moee.errors import MoEEError
from moee.utils import new_temp, replace, storage_errors, write_json

SCHEMA_VERSION = 1
NUM_LANDMARKS = 68
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("mp4", "wav", "json", "au.npy", "lmk.npy")


class ShardError(MoEEError, ValueError):
    """A shard or sample that does not follow the schema; the message names it by key."""


@dataclass
class ClipMeta:
    """The ``json`` entry of a sample."""

    identity: str
    emotion: str
    weights: list[float]
    intensity: float
    num_frames: int
    size: int
    fps: int = VIDEO_FPS
    sample_rate: int = AUDIO_RATE
    text: str = ""
    source: str = ""
    split: str = "train"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Clip:
    """One decoded clip: frames, audio, labels and optional extras."""

    key: str
    meta: ClipMeta
    frames: np.ndarray  # (T, H, W, 3) uint8
    audio: np.ndarray  # (T * 640,) float32
    aus: np.ndarray  # (T, 17) float32
    landmarks: np.ndarray  # (T, 68, 2) float32 in [0, 1]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Memory held by the clip's arrays."""
        arrays = (self.frames, self.audio, self.aus, self.landmarks, *self.extras.values())
        return sum(array.nbytes for array in arrays)


def sample_key(identity: str, clip: str) -> str:
    """The tar-safe key of a clip (WebDataset splits keys at the first dot)."""
    return f"{identity}__{clip}".replace(".", "-").replace("/", "-")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def load_npy(data: bytes, key: str, name: str) -> np.ndarray:
    """A sample's ``.npy`` entry (``ShardError`` naming the sample when it is unreadable)."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ShardError(f"sample {key!r}: unreadable {name}: {error}") from None


def encode_clip(clip: Clip, crf: int = 18) -> dict[str, Any]:
    """Turn a Clip into the dict of bytes that a WebDataset tar stores."""
    check_clip(clip)
    sample: dict[str, Any] = {
        "__key__": clip.key,
        "mp4": encode_mp4(clip.frames, fps=clip.meta.fps, crf=crf),
        "wav": encode_wav(clip.audio, clip.meta.sample_rate),
        "json": json.dumps(asdict(clip.meta)).encode(),
        "au.npy": _npy(clip.aus.astype(np.float16)),
        "lmk.npy": _npy(clip.landmarks.astype(np.float16)),
    }
    for name, array in clip.extras.items():
        sample[name] = _npy(array)
    return sample


def check_clip(clip: Clip) -> None:
    """Raise ShardError if the arrays of a clip disagree with each other or its metadata."""
    t = clip.meta.num_frames
    problems = []
    if clip.frames.shape != (t, clip.meta.size, clip.meta.size, 3):
        problems.append(f"frames {clip.frames.shape} != ({t}, {clip.meta.size}, ...)")
    if clip.aus.shape != (t, NUM_ACTION_UNITS):
        problems.append(f"au {clip.aus.shape} != ({t}, {NUM_ACTION_UNITS})")
    if clip.landmarks.shape != (t, NUM_LANDMARKS, 2):
        problems.append(f"lmk {clip.landmarks.shape} != ({t}, {NUM_LANDMARKS}, 2)")
    expected = t * clip.meta.sample_rate // clip.meta.fps
    if abs(len(clip.audio) - expected) > SAMPLES_PER_FRAME:
        problems.append(f"audio has {len(clip.audio)} samples, expected ~{expected}")
    if problems:
        raise ShardError(f"sample {clip.key!r}: " + "; ".join(problems))


def decode_clip(sample: dict[str, Any]) -> Clip:
    """Decode and validate one raw WebDataset sample (bytes values) into a Clip."""
    key = sample.get("__key__", "?")
    where = f" in {sample['__url__']}" if "__url__" in sample else ""
    missing = [name for name in REQUIRED_KEYS if name not in sample]
    if missing:
        raise ShardError(f"sample {key!r}{where} lacks {', '.join(missing)}")
    try:
        meta_dict = json.loads(sample["json"])
        meta = ClipMeta(**meta_dict)
    except (ValueError, TypeError) as error:
        raise ShardError(f"sample {key!r}{where}: bad json: {error}") from None
    try:
        frames, _ = read_video(sample["mp4"])
        audio = read_audio(sample["wav"], meta.sample_rate)
    except MediaError as error:
        raise ShardError(f"sample {key!r}{where}: {error}") from None
    extras = {
        name: load_npy(value, key, name)
        for name, value in sample.items()
        if name.endswith(".npy") and name not in ("au.npy", "lmk.npy")
    }
    clip = Clip(
        key=key,
        meta=meta,
        frames=frames,
        audio=audio,
        aus=load_npy(sample["au.npy"], key, "au.npy").astype(np.float32),
        landmarks=load_npy(sample["lmk.npy"], key, "lmk.npy").astype(np.float32),
        extras=extras,
    )
    try:
        check_clip(clip)
    except ShardError as error:
        raise ShardError(f"{error}{where}") from None
    return clip


@dataclass
class ShardInfo:
    """What the manifest records of one shard."""

    name: str
    samples: int
    frames: int
    bytes: int
    sha256: str
    identities: list[str]
    emotions: dict[str, int]


class ShardWriter:
    """Write Clips into ``<folder>/<prefix>-NNNNNN.tar`` shards of at most ``max_samples``.

    Each shard is written under a temporary name and renamed when closed, so a crash never
    leaves a half shard and a shard of the same name from before stays intact until then; a
    full disk is one-line :class:`~moee.utils.WriteError` (the open shard is dropped, finished
    ones stay). ``close()`` returns the ShardInfo of every shard written; pass them
    (from all writers of a folder) to :func:`write_manifest`.
    """

    def __init__(self, folder: str | os.PathLike, prefix: str = "shard", max_samples: int = 64,
                 start_index: int = 0, crf: int = 18):
        self.folder = Path(folder)
        self.prefix = prefix
        self.max_samples = max_samples
        self.index = start_index
        self.crf = crf
        self.infos: list[ShardInfo] = []
        self._tar: wds.TarWriter | None = None
        self._partial: Path | None = None
        self._samples: list[ClipMeta] = []

    @property
    def _final(self) -> Path:
        return self.folder / f"{self.prefix}-{self.index:06d}.tar"

    def write(self, clip: Clip) -> None:
        """Append one clip, opening a new shard when the current one is full."""
        sample = encode_clip(clip, crf=self.crf)
        with self._dropped_on_error():
            if self._tar is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._partial = new_temp(self._final)
                self._tar = wds.TarWriter(str(self._partial))
            self._tar.write(sample)
        self._samples.append(clip.meta)
        if len(self._samples) >= self.max_samples:
            self._finish()

    def _dropped_on_error(self) -> contextlib.AbstractContextManager[None]:
        """Abort the open shard if the block fails (storage errors as WriteError)."""
        return storage_errors(self._final, cleanup=self.abort)

    def _finish(self) -> None:
        with self._dropped_on_error():
            self._tar.close()
            partial = self._partial
            info = ShardInfo(
                name=self._final.name,
                samples=len(self._samples),
                frames=sum(m.num_frames for m in self._samples),
                bytes=partial.stat().st_size,
                sha256=_sha256(partial),
                identities=sorted({m.identity for m in self._samples}),
                emotions=dict(Counter(m.emotion for m in self._samples)),
            )
            replace(partial, self._final)
        self.infos.append(info)
        self._tar, self._partial, self._samples = None, None, []
        self.index += 1

    def close(self) -> list[ShardInfo]:
        """Finish the open shard and return what was written."""
        if self._tar is not None:
            self._finish()
        return self.infos

    def abort(self) -> None:
        """Drop the open shard: its partial file is removed, finished shards stay."""
        if self._tar is not None:
            with contextlib.suppress(OSError):  # closing flushes, which may fail again...
                self._tar.close()
            with contextlib.suppress(OSError):  # ...and then the file itself is still open
                self._tar.stream.close()
            self._partial.unlink(missing_ok=True)
            self._tar, self._partial, self._samples = None, None, []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike, infos: list[ShardInfo], **attributes: Any) -> Path:
    """Write ``manifest.json`` for a shard folder from the ShardInfos of its writers."""
    infos = sorted(infos, key=lambda info: info.name)
    emotions: Counter = Counter()
    for info in infos:
        emotions.update(info.emotions)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "samples": sum(i.samples for i in infos),
        "frames": sum(i.frames for i in infos),
        "identities": sorted({identity for i in infos for identity in i.identities}),
        "emotions": dict(sorted(emotions.items())),
        "shards": [asdict(i) for i in infos],
        **attributes,
    }
    return write_json(Path(folder) / MANIFEST, manifest)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Read a shard folder's manifest, with a clear error when it is missing."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ShardError(f"no {MANIFEST} in {str(folder)!r}: is this a MoEE shard folder?")
    return json.loads(path.read_text(encoding="utf-8"))


def shard_urls(folder: str | os.PathLike) -> list[str]:
    """Paths of the shards a folder's manifest lists, in order."""
    return [str(Path(folder) / s["name"]) for s in read_manifest(folder)["shards"]]


@dataclass
class ShardDamage:
    """A shard that does not match its manifest entry."""

    name: str
    path: str
    problem: str
    samples: int
    """Samples the manifest says it holds."""


def check_shards(folder: str | os.PathLike, checksums: bool = False) -> list[ShardDamage]:
    """The shards of a folder that differ from its manifest: missing, of another size, or
    (with ``checksums``, which reads every byte) of another sha256. Sizes alone take a
    ``stat`` per shard."""
    damaged = []
    for shard in read_manifest(folder)["shards"]:
        path = Path(folder) / shard["name"]
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            problem = "missing"
        elif size < shard["bytes"]:
            problem = f"truncated ({size:,} of {shard['bytes']:,} bytes)"
        elif size > shard["bytes"]:
            problem = f"larger than listed ({size:,} bytes, not {shard['bytes']:,})"
        elif checksums and _sha256(path) != shard["sha256"]:
            problem = "sha256 differs from the manifest"
        else:
            continue
        damaged.append(ShardDamage(shard["name"], str(path), problem, shard["samples"]))
    return damaged


def verify_shards(folder: str | os.PathLike) -> list[str]:
    """Check every shard against its manifest checksum; return the names that differ."""
    return [damage.name for damage in check_shards(folder, checksums=True)]


def iter_tar_samples(stream: BinaryIO, url: str) -> Iterator[dict[str, Any]]:
    """The raw samples (bytes per key) of a tar stream, grouped by key, each with its
    ``__url__``; a sample is yielded only once complete, so a damaged tail drops the sample it
    cuts. Tar and I/O errors propagate unchanged."""
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        current: dict[str, Any] = {}
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if current and current["__key__"] != key:
                yield current
                current = {}
            current.setdefault("__key__", key)
            current["__url__"] = url
            current[ext] = tar.extractfile(member).read()
        if current:
            yield current


def iter_raw_samples(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield the raw samples (bytes per key) of one shard file, grouped by key."""
    try:
        with open(path, "rb") as handle:
            yield from iter_tar_samples(handle, str(path))
    except tarfile.TarError as error:
        raise ShardError(f"corrupt shard {str(path)!r}: {error}") from None
