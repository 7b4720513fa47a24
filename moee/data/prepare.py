"""``python -m moee prepare``: folders of real talking videos → MoEE shards.

For every input video: decode (streamed, resampled to 25 fps), cut into clips of at most
``max_seconds``, load the audio (inside the video or a side file, any rate → 16 kHz mono),
detect the face on every ``detect_every``-th frame and crop one stable square per clip,
track MediaPipe face-mesh landmarks (→ iBUG-68), estimate AUs (pluggable), describe the
emotion in text, and write the clip. Identities are processed as units so that masked noisy
emotion sampling gets references of the same person in other emotions (``mnsref.npy``,
``mnslmk.npy``, ``meta.extra["mns_emotions"]``).

Bad inputs (unreadable video, no face, several faces, missing or silent audio, too short,
unknown emotion, ...) are skipped with a counted reason; nothing crashes the run and no half
shard is ever visible. Each identity keeps a journal (``.journal/<identity>.jsonl``) of the
shards it finished and the videos it skipped, so a rerun redoes only what is missing.
Identities run in parallel worker processes (``workers``) with a progress bar; the run ends
with a summary and the folder's ``manifest.json``. Layouts: see ``data/*.md``.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import multiprocessing
import os
import queue
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import av
import numpy as np
from tqdm import tqdm

from moee.data.annotate import (
    AUExtractor,
    describe_emotion,
    expression_score,
    load_describer,
    make_au_extractor,
)
from moee.data.faces import (
    DetectorName,
    FaceMeshLandmarker,
    crop_square,
    fill_missing,
    make_detector,
    stable_square_box,
)
from moee.data.media import (
    AUDIO_RATE,
    SAMPLES_PER_FRAME,
    VIDEO_FPS,
    MediaError,
    check_speech,
    read_audio,
)
from moee.data.sampling import MNS_LANDMARKS, MNS_REFERENCE, NO_SOURCE
from moee.data.shards import Clip, ClipMeta, ShardInfo, ShardWriter, sample_key, write_manifest
from moee.emotions import NEUTRAL, EmotionSpecError, canonical_emotion_name, parse_emotion

log = logging.getLogger(__name__)

Layout = Literal["mead", "hdtf", "dh-faceemovid", "csv"]
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
AUDIO_SUFFIXES = (".m4a", ".wav", ".mp3", ".aac", ".flac")
JOURNAL = ".journal"


@dataclass
class SourceVideo:
    """One input video and its labels (from the folder layout or the CSV)."""

    video: str
    identity: str
    name: str
    emotion: str = NEUTRAL
    intensity: float = 1.0
    text: str = ""
    audio: str | None = None
    labelled: bool = True


# ---------------------------------------------------------------------------------- layouts

def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)


def _level(part: str) -> float | None:
    match = re.fullmatch(r"level_?(\d+)", part)
    return min(int(match.group(1)), 3) / 3 if match else None


def discover_mead(root: Path) -> list[SourceVideo]:
    """MEAD: ``<id>/video/front/<emotion>/level_<n>/<clip>.mp4``; audio in the video or in
    ``<id>/audio/<emotion>/level_<n>/<clip>.m4a``; intensity ``n / 3``."""
    found = []
    for video in _videos(root):
        parts = video.relative_to(root).parts
        if len(parts) != 6 or parts[1:3] != ("video", "front"):
            continue
        identity, emotion, level = parts[0], parts[3], parts[4]
        audio_dir = root / identity / "audio" / emotion / level
        audio = next((str(audio_dir / (video.stem + s)) for s in AUDIO_SUFFIXES
                      if (audio_dir / (video.stem + s)).is_file()), None)
        found.append(SourceVideo(
            video=str(video), identity=identity, name=f"{emotion}-{level}-{video.stem}",
            emotion=emotion, intensity=_level(level) or 1.0, audio=audio))
    return found


def discover_hdtf(root: Path) -> list[SourceVideo]:
    """HDTF: ``<name>_<nn>.mp4`` anywhere below ``root``; identity ``<name>``, no emotion
    label (stored as neutral with ``label_source = "none"``)."""
    return [
        SourceVideo(video=str(v), identity=re.sub(r"_\d+$", "", v.stem), name=v.stem,
                    emotion=NEUTRAL, intensity=0.0, labelled=False)
        for v in _videos(root)
    ]


def discover_dh_faceemovid(root: Path) -> list[SourceVideo]:
    """DH-FaceEmoVid-150: ``<id>/<emotion>[/level_<n>]/<clip>.mp4``; emotion folders may name
    compounds with underscores (``sadly_surprised``)."""
    found = []
    for video in _videos(root):
        parts = video.relative_to(root).parts
        if len(parts) not in (3, 4):
            continue
        level = _level(parts[2]) if len(parts) == 4 else None
        if len(parts) == 4 and level is None:
            continue
        found.append(SourceVideo(
            video=str(video), identity=parts[0],
            name="-".join((*parts[1:-1], video.stem)), emotion=parts[1].replace("_", " "),
            intensity=1.0 if level is None else level))
    return found


def read_csv_list(path: Path) -> list[SourceVideo]:
    """A CSV with a header ``path,identity,emotion,intensity[,text]``; paths relative to it.

    An empty emotion means unlabelled (neutral, ``label_source = "none"``)."""
    found = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            video = (path.parent / row["path"]).resolve()
            emotion = (row.get("emotion") or "").strip()
            found.append(SourceVideo(
                video=str(video), identity=row["identity"].strip(),
                name=Path(row["path"]).with_suffix("").as_posix().replace("/", "-"),
                emotion=emotion or NEUTRAL, intensity=float(row.get("intensity") or 1.0),
                text=(row.get("text") or "").strip(), labelled=bool(emotion)))
    return found


def discover(root: Path, layout: Layout, csv_path: Path | None = None) -> list[SourceVideo]:
    """All input videos of a data set folder in the given layout."""
    if layout == "csv" or csv_path is not None:
        if csv_path is None:
            raise ValueError("layout 'csv' needs --csv PATH")
        return read_csv_list(Path(csv_path))
    finders: dict[str, Callable[[Path], list[SourceVideo]]] = {
        "mead": discover_mead, "hdtf": discover_hdtf, "dh-faceemovid": discover_dh_faceemovid,
    }
    if layout not in finders:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(finders)}, csv")
    return finders[layout](Path(root))


# ------------------------------------------------------------------------------ processing

class Skip(Exception):
    """A video or clip that is left out; ``reason`` is the counted category."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class PrepareConfig:
    """Options of the preparation (the CLI's arguments minus folders and parallelism)."""

    size: int = 512
    max_seconds: float = 5.0
    min_frames: int = 20
    detector: DetectorName = "mediapipe"
    detect_every: int = 5
    crop_scale: float = 1.8
    au_model: str | None = None
    min_intensity: float = 0.0
    min_expression: float = 0.0
    describer: str | None = None
    mns_refs: int = 2
    shard_size: int = 32
    split: str = "train"
    crf: int = 18


def _probe(path: str) -> tuple[float, int | None]:
    """(video frame rate, audio sample rate or None) of a media file."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise Skip("unreadable video", f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or VIDEO_FPS)
            rate = container.streams.audio[0].sample_rate if container.streams.audio else None
        return fps, rate
    except (av.error.FFmpegError, OSError) as error:
        raise Skip("unreadable video", f"{path}: {error}") from None


def stream_frames(path: str, chunk: int) -> Iterator[np.ndarray]:
    """Decode a video resampled to 25 fps by FFmpeg's ``fps`` filter (the nearest frame to each
    output instant, duplicated or dropped), as RGB, in chunks of ``chunk`` frames."""
    buffer: list[np.ndarray] = []
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            graph = av.filter.Graph()
            graph.link_nodes(graph.add_buffer(template=stream),
                             graph.add("fps", f"fps={VIDEO_FPS}"),
                             graph.add("format", "rgb24"), graph.add("buffersink")).configure()
            for frame in itertools.chain(container.decode(stream), [None]):  # None: flush
                graph.vpush(frame)
                while (resampled := _pulled(graph)) is not None:
                    buffer.append(resampled.to_ndarray())
                    if len(buffer) == chunk:
                        yield np.stack(buffer)
                        buffer = []
    except av.error.FFmpegError as error:
        raise Skip("unreadable video", f"{path}: {error}") from None
    if buffer:
        yield np.stack(buffer)


def _pulled(graph: av.filter.Graph) -> av.VideoFrame | None:
    """The filter graph's next output frame, or ``None`` until more input (or at the end)."""
    try:
        return graph.vpull()
    except (av.error.BlockingIOError, av.error.EOFError):
        return None


@dataclass
class Outcome:
    """What processing one video gave: clips, per-clip skip reasons and notes."""

    clips: list[Clip] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)


class VideoProcessor:
    """Turns one :class:`SourceVideo` into clips; built once per worker process."""

    def __init__(self, config: PrepareConfig):
        self.config = config
        self.detector = make_detector(config.detector)
        self.au_extractor: AUExtractor = make_au_extractor(config.au_model)
        self.describer = load_describer(config.describer) if config.describer else None

    def __call__(self, source: SourceVideo) -> Outcome:
        """Clips of a video; a whole-video problem raises :class:`Skip`."""
        cfg = self.config
        try:
            emotion = canonical_emotion_name(source.emotion)
            condition = parse_emotion(emotion if emotion == NEUTRAL
                                      else f"{emotion}@{source.intensity}")
        except EmotionSpecError as error:
            raise Skip("unknown emotion", str(error)) from None
        if source.labelled and emotion != NEUTRAL and condition.intensity < cfg.min_intensity:
            raise Skip("low intensity")
        outcome = Outcome()
        fps, rate = _probe(source.video)
        if round(fps, 2) != VIDEO_FPS:
            outcome.notes[f"video resampled from {fps:g} fps"] += 1
        audio = self._audio(source, rate, outcome)
        max_frames = max(int(cfg.max_seconds * VIDEO_FPS), cfg.min_frames)
        for index, frames in enumerate(stream_frames(source.video, max_frames)):
            start = index * max_frames
            usable = min(len(frames), len(audio) // SAMPLES_PER_FRAME - start)
            try:
                if usable < cfg.min_frames:
                    raise Skip("too short", f"{usable} frames with audio")
                clip_audio = audio[start * SAMPLES_PER_FRAME : (start + usable) * SAMPLES_PER_FRAME]
                try:
                    check_speech(clip_audio, f"audio of {source.video}")
                except MediaError as error:
                    raise Skip("silent audio", str(error)) from None
                outcome.clips.append(self._clip(source, condition, f"{source.name}-s{index}",
                                                frames[:usable], clip_audio))
            except Skip as skip:
                outcome.skipped[skip.reason] += 1
                log.info("%s, clip %d: %s", source.video, index, skip)
        return outcome

    def _audio(self, source: SourceVideo, rate: int | None, outcome: Outcome) -> np.ndarray:
        path = source.audio or source.video
        if source.audio is not None:
            try:
                rate = _probe_audio_rate(source.audio)
            except MediaError as error:
                raise Skip("no audio", str(error)) from None
        elif rate is None:
            raise Skip("no audio", f"{source.video} has no audio stream and no audio file")
        if rate != AUDIO_RATE:
            outcome.notes[f"audio resampled from {rate} Hz"] += 1
        try:
            return read_audio(path, AUDIO_RATE)
        except MediaError as error:
            raise Skip("no audio", str(error)) from None

    def _clip(self, source: SourceVideo, condition, name: str, frames: np.ndarray,
              audio: np.ndarray) -> Clip:
        cfg = self.config
        sampled = list(range(0, len(frames), cfg.detect_every))
        detections = [self.detector.detect(frames[i]) for i in sampled]
        with_face = [boxes for boxes in detections if boxes]
        if len(with_face) < 0.5 * len(sampled):
            raise Skip("no face", f"a face in {len(with_face)} of {len(sampled)} checked frames")
        if sum(len(boxes) > 1 for boxes in detections) > 0.2 * len(sampled):
            raise Skip("several faces")
        box = stable_square_box([boxes[0] for boxes in with_face], frames.shape[1:3],
                                cfg.crop_scale)
        crops = crop_square(frames, box, cfg.size)
        landmarks, found = FaceMeshLandmarker()(crops)
        if found.mean() < 0.5:
            raise Skip("landmarks failed", f"face mesh found in {found.mean():.0%} of frames")
        landmarks = fill_missing(landmarks)
        aus = self.au_extractor(crops, landmarks)
        has_aus = self.au_extractor.name != NO_SOURCE
        if has_aus and expression_score(condition.name, aus) < cfg.min_expression:
            raise Skip("weak expression")
        meta = ClipMeta(
            identity=source.identity, emotion=condition.name, weights=list(condition.weights),
            intensity=condition.intensity, num_frames=len(crops), size=cfg.size,
            source=source.video, split=cfg.split,
            extra={"au_source": self.au_extractor.name, "crop_box": list(box),
                   "label_source": "layout" if source.labelled else NO_SOURCE},
        )
        if source.text:
            meta.text = source.text
        elif self.describer is not None:
            meta.text = self.describer(crops, asdict(meta))
        else:
            meta.text = describe_emotion(condition.name, condition.intensity,
                                         aus if has_aus else None, variant=name)
        return Clip(key=sample_key(source.identity, name), meta=meta, frames=crops,
                    audio=audio.astype(np.float32), aus=aus.astype(np.float32),
                    landmarks=landmarks, extras={})


def _probe_audio_rate(path: str) -> int:
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MediaError(f"{path!r} has no audio stream")
            return container.streams.audio[0].sample_rate
    except (av.error.FFmpegError, OSError) as error:
        raise MediaError(f"cannot read {path!r}: {error}") from None


# ------------------------------------------------------------------------ identities, journal

@dataclass
class Report:
    """Counts of one identity or of a whole run."""

    videos: int = 0
    done_before: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    shards: list[dict] = field(default_factory=list)

    def add(self, other: Report) -> None:
        """Accumulate another report into this one."""
        self.videos += other.videos
        self.done_before += other.done_before
        self.kept += other.kept
        self.skipped.update(other.skipped)
        self.notes.update(other.notes)
        self.shards += other.shards

    def summary(self) -> str:
        """A few lines for the end of a run."""
        lines = [f"videos: {self.videos} ({self.done_before} done in an earlier run)",
                 f"clips kept: {self.kept} in {len(self.shards)} shards"]
        lines += [f"skipped ({reason}): {n}" for reason, n in sorted(self.skipped.items())]
        lines += [f"note ({note}): {n}" for note, n in sorted(self.notes.items())]
        return "\n".join(lines)


def safe_name(identity: str) -> str:
    """A file-name-safe form of an identity (shard prefix and journal name)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", identity)


class Journal:
    """Append-only record of one identity's finished shards and skipped videos.

    One JSON object per line, appended and flushed after each event; a line torn by a crash
    is ignored on reading.
    """

    def __init__(self, output: Path, identity: str):
        self.path = output / JOURNAL / f"{safe_name(identity)}.jsonl"
        self.entries: list[dict] = []
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    self.entries.append(json.loads(line))
                except ValueError:
                    break

    def append(self, entry: dict) -> None:
        """Record one event durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.entries.append(entry)

    @property
    def shards(self) -> list[dict]:
        """Finished shard records: ``{"shard": ShardInfo dict, "sources": [...]}``."""
        return [e for e in self.entries if "shard" in e]

    @property
    def done(self) -> set[str]:
        """Names of the videos fully handled (written or skipped)."""
        names = {e["source"] for e in self.entries if "source" in e}
        return names.union(*(e["sources"] for e in self.shards))


def _pool_refs(sources: list[SourceVideo], process: VideoProcessor,
               count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Reference frames of one identity: ``count`` frames of the first usable video of each
    emotion, as (emotion, frame, landmarks)."""
    refs = []
    by_emotion: dict[str, list[SourceVideo]] = {}
    for source in sources:
        by_emotion.setdefault(source.emotion, []).append(source)
    if len(by_emotion) < 2:
        return refs
    for emotion_sources in by_emotion.values():
        for source in emotion_sources[:3]:
            try:
                clips = process(source).clips
            except Skip:
                continue
            if clips:
                clip = clips[0]
                picks = np.linspace(0, len(clip.frames) - 1, count).round().astype(int)
                refs += [(clip.meta.emotion, clip.frames[i], clip.landmarks[i]) for i in picks]
                break
    return refs


def _attach_mns(clip: Clip, refs: list, count: int) -> None:
    others = [r for r in refs if r[0] != clip.meta.emotion]
    if not others or not count:
        return
    rng = np.random.default_rng(list(clip.key.encode()))
    picks = rng.choice(len(others), size=min(count, len(others)), replace=False)
    clip.extras[MNS_REFERENCE] = np.stack([others[i][1] for i in picks])
    clip.extras[MNS_LANDMARKS] = np.stack([others[i][2] for i in picks]).astype(np.float16)
    clip.meta.extra["mns_emotions"] = [others[i][0] for i in picks]


def process_identity(identity: str, sources: list[SourceVideo], output: Path,
                     config: PrepareConfig, processor: VideoProcessor,
                     progress: Callable[[], None] = lambda: None) -> Report:
    """Prepare all videos of one person that earlier runs have not finished."""
    report = Report(videos=len(sources))
    journal = Journal(output, identity)
    prefix = safe_name(identity)
    todo = [s for s in sources if s.name not in journal.done]
    report.done_before = len(sources) - len(todo)
    for _ in range(report.done_before):
        progress()
    kept = {r["shard"]["name"] for r in journal.shards}
    for stale in output.glob(f".{prefix}-*.tar.*.tmp"):  # temporaries of a killed run
        stale.unlink()
    for orphan in output.glob(f"{prefix}-[0-9]*.tar"):
        if orphan.name not in kept:  # renamed but not journaled before a crash: redone below
            orphan.unlink()
    if todo:
        refs = _pool_refs(sources, processor, config.mns_refs) if config.mns_refs else []
        index = len(journal.shards)
        writer, in_shard, count = None, [], 0
        for source in todo:
            try:
                outcome = processor(source)
            except Skip as skip:
                report.skipped[skip.reason] += 1
                log.info("skipping %s: %s", source.video, skip)
                journal.append({"source": source.name, "skipped": skip.reason})
                progress()
                continue
            report.skipped.update(outcome.skipped)
            report.notes.update(outcome.notes)
            if not outcome.clips:
                journal.append({"source": source.name, "skipped": "no usable clip"})
                progress()
                continue
            if writer is None:
                writer = ShardWriter(output, prefix=prefix, max_samples=1 << 30,
                                     start_index=index, crf=config.crf)
            for clip in outcome.clips:
                _attach_mns(clip, refs, config.mns_refs)
                writer.write(clip)
            report.kept += len(outcome.clips)
            in_shard.append(source.name)
            count += len(outcome.clips)
            if count >= config.shard_size:
                _finish_shard(writer, journal, in_shard)
                writer, in_shard, count, index = None, [], 0, index + 1
            progress()
        if writer is not None:
            _finish_shard(writer, journal, in_shard)
    report.shards = [r["shard"] for r in journal.shards]
    return report


def _finish_shard(writer: ShardWriter, journal: Journal, sources: list[str]) -> None:
    (info,) = writer.close()
    journal.append({"shard": asdict(info), "sources": sources})


# ----------------------------------------------------------------------------------- running

_worker: dict = {}


def _init_worker(config: PrepareConfig, output: Path, progress_queue) -> None:
    logging.basicConfig(level=logging.WARNING)
    _worker.update(processor=VideoProcessor(config), config=config, output=output,
                   queue=progress_queue)


def _run_identity(job: tuple[str, list[SourceVideo]]) -> Report:
    identity, sources = job
    return process_identity(identity, sources, _worker["output"], _worker["config"],
                            _worker["processor"], lambda: _worker["queue"].put(1))


def prepare_dataset(input: Path, output: Path, layout: Layout = "mead", csv: Path | None = None,
                    identities: list[str] | None = None, workers: int = 1,
                    config: PrepareConfig | None = None, progress_bar: bool = True) -> Report:
    """Prepare a data set folder into a shard folder; returns the run's counts."""
    config = config or PrepareConfig()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    sources = discover(Path(input), layout, csv)
    by_identity: dict[str, list[SourceVideo]] = {}
    for source in sources:
        if identities is None or source.identity in identities:
            by_identity.setdefault(source.identity, []).append(source)
    jobs = sorted(by_identity.items())
    total = Report()
    bar = tqdm(total=sum(len(s) for _, s in jobs), unit="video", disable=not progress_bar)
    if workers <= 1 or len(jobs) <= 1:
        processor = VideoProcessor(config)
        for identity, group in jobs:
            total.add(process_identity(identity, group, output, config, processor,
                                       lambda: bar.update()))
    else:
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager:
            updates = manager.Queue()
            with context.Pool(min(workers, len(jobs)), _init_worker,
                              (config, output, updates)) as pool:
                pending = pool.map_async(_run_identity, jobs)
                while not pending.ready() or not updates.empty():
                    try:
                        bar.update(updates.get(timeout=0.2))
                    except queue.Empty:
                        pass
                for report in pending.get():
                    total.add(report)
    bar.close()
    write_manifest(output, [ShardInfo(**info) for info in total.shards],
                   layout=layout, prepare=asdict(config))
    return total


def prepare(
    input: Path,
    output: Path,
    layout: Layout = "mead",
    csv: Path | None = None,
    identities: list[str] | None = None,
    workers: int = 1,
    size: int = 512,
    max_seconds: float = 5.0,
    min_frames: int = 20,
    detector: DetectorName = "mediapipe",
    detect_every: int = 5,
    crop_scale: float = 1.8,
    au_model: str | None = None,
    min_intensity: float = 0.0,
    min_expression: float = 0.0,
    describer: str | None = None,
    mns_refs: int = 2,
    shard_size: int = 32,
    split: str = "train",
    crf: int = 18,
) -> None:
    """Turn a folder of talking-face videos into MoEE shards (resumable: rerun to continue).

    Args:
        input: the data set folder.
        output: the shard folder (created; shards, manifest.json and .journal/ go here).
        layout: folder layout: mead, hdtf, dh-faceemovid, or csv (see data/*.md).
        csv: a CSV ``path,identity,emotion,intensity[,text]`` listing the videos (any layout).
        identities: prepare only these people.
        workers: parallel processes (one identity at a time each).
        size: side of the square face crop in pixels.
        max_seconds: longer videos are cut into clips of at most this length.
        min_frames: clips shorter than this (at 25 fps) are skipped.
        detector: face detector: mediapipe, or haar (OpenCV fallback).
        detect_every: run the face detector on every n-th frame.
        crop_scale: crop side as a multiple of the detected face size.
        au_model: exported AU network (torch.export .pt2 or TorchScript .pt, e.g. ME-GraphAU
            or LibreFace); none: AUs are zeros and marked absent.
        min_intensity: skip labelled clips less intense than this.
        min_expression: with an AU model, skip clips whose AUs match their label less than this
            (cosine with the label's AU prototype).
        describer: ``package.module:function`` making text descriptions (e.g. a VLM); default:
            templates from label and AUs.
        mns_refs: other-emotion reference frames stored per clip for masked noisy sampling.
        shard_size: clips per shard.
        split: split name written into each clip's metadata.
        crf: H.264 quality of the stored crops (lower is better).
    """
    config = PrepareConfig(
        size=size, max_seconds=max_seconds, min_frames=min_frames, detector=detector,
        detect_every=detect_every, crop_scale=crop_scale, au_model=au_model,
        min_intensity=min_intensity, min_expression=min_expression, describer=describer,
        mns_refs=mns_refs, shard_size=shard_size, split=split, crf=crf,
    )
    report = prepare_dataset(input, output, layout, csv, identities, workers, config)
    print(report.summary())


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m moee prepare``."""
    from jsonargparse import auto_cli

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    auto_cli(prepare, args=argv, prog="python -m moee prepare")


if __name__ == "__main__":
    main()
