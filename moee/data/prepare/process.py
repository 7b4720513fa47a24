"""One source video → clips: decode at 25 fps, cut, load the audio, find and crop the face,
landmarks, AUs, a description; bad inputs are skipped with a counted reason (:class:`Skip`).
The media I/O (PyAV) is :mod:`moee.data.media`'s."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

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
    probe_rates,
    read_audio,
    stream_frames,
)
from moee.data.prepare.layouts import SourceVideo
from moee.data.sampling import NO_SOURCE
from moee.data.shards import Clip, ClipMeta, sample_key
from moee.emotions import NEUTRAL, EmotionSpecError, canonical_emotion_name, parse_emotion

log = logging.getLogger(__name__)


class Skip(Exception):
    """A video or clip that is left out; ``reason`` is the counted category."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class PrepareConfig:
    """How :func:`~moee.data.prepare.prepare` turns videos into clips and shards.

    Attributes:
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
        fps, rate = probe_rates(path)
    except MediaError as error:
        raise Skip("unreadable video", str(error)) from None
    if fps is None:
        raise Skip("unreadable video", f"{path}: no video stream")
    return fps, rate


def _frames(path: str, chunk: int) -> Iterator[np.ndarray]:
    """:func:`moee.data.media.stream_frames` at 25 fps; an unreadable video is a :class:`Skip`."""
    try:
        yield from stream_frames(path, chunk)
    except MediaError as error:
        raise Skip("unreadable video", str(error)) from None


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
        for index, frames in enumerate(_frames(source.video, max_frames)):
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
                rate = _audio_rate(source.audio)
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


def _audio_rate(path: str) -> int:
    """The sample rate of a separate audio file; a MediaError when it has no audio stream."""
    rate = probe_rates(path)[1]
    if rate is None:
        raise MediaError(f"{path!r} has no audio stream")
    return rate
