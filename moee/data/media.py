"""Video and audio I/O with PyAV: mp4 (H.264 + AAC) and wav, from bytes or files.

Every reader returns plain NumPy arrays — frames ``(T, H, W, 3) uint8`` and mono audio
``(samples,) float32`` in [-1, 1] at the asked sample rate — and every failure is a
:class:`MediaError` with one line that names the file and what is wrong.
"""

from __future__ import annotations

import io
import itertools
import os
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from moee.errors import BadInputError
from moee.utils import atomic_path

VIDEO_FPS = 25
"""Frame rate of every video MoEE trains on and writes."""
AUDIO_RATE = 16_000
"""Sample rate of every waveform MoEE trains on (wav2vec2's rate)."""
SAMPLES_PER_FRAME = AUDIO_RATE // VIDEO_FPS


class MediaError(BadInputError, ValueError):
    """A video or audio input that cannot be used; the message says why in one line."""


Source = str | os.PathLike | bytes


def _open(source: Source) -> av.container.InputContainer:
    handle: str | BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
    try:
        return av.open(handle, mode="r")
    except (av.error.FFmpegError, OSError) as error:
        raise MediaError(f"cannot read {_name(source)}: {error}") from None


def _name(source: Source) -> str:
    return f"{len(source)} bytes of media" if isinstance(source, bytes) else repr(str(source))


def encode_mp4(
    frames: np.ndarray,
    fps: int = VIDEO_FPS,
    audio: np.ndarray | None = None,
    sample_rate: int = AUDIO_RATE,
    crf: int = 18,
) -> bytes:
    """Encode ``(T, H, W, 3) uint8`` frames (and optional mono audio) as an H.264/AAC mp4."""
    buffer = io.BytesIO()
    _write_mp4(buffer, frames, fps, audio, sample_rate, crf)
    return buffer.getvalue()


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: int = VIDEO_FPS,
    audio: np.ndarray | None = None,
    sample_rate: int = AUDIO_RATE,
    crf: int = 18,
) -> Path:
    """Write an mp4 atomically: a temporary name first, renamed once complete."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            _write_mp4(handle, frames, fps, audio, sample_rate, crf)
    return Path(path)


def _write_mp4(handle, frames, fps, audio, sample_rate, crf) -> None:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise MediaError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise MediaError(f"H.264 needs even frame sizes, got {width}x{height}")
    with av.open(handle, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": str(crf), "preset": "veryfast", "tune": "fastdecode"}
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate, layout="mono")
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        if sound is not None:
            samples = np.clip(np.asarray(audio, dtype=np.float32), -1, 1)[None]
            chunk = 1024
            for start in range(0, samples.shape[1], chunk):
                piece = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, start : start + chunk]), format="fltp",
                    layout="mono",
                )
                piece.sample_rate = sample_rate
                piece.pts = start
                container.mux(sound.encode(piece))
            container.mux(sound.encode())


def _video_stream(container: av.container.InputContainer, source: Source) -> av.VideoStream:
    """The first video stream, decoded with threads; a MediaError where there is none."""
    if not container.streams.video:
        raise MediaError(f"{_name(source)} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _frame_rate(stream: av.VideoStream) -> float:
    return float(stream.average_rate or stream.guessed_rate or VIDEO_FPS)


def read_video(source: Source) -> tuple[np.ndarray, float]:
    """Decode all frames of a video: ``(T, H, W, 3) uint8`` and its frame rate."""
    with _open(source) as container:
        stream = _video_stream(container, source)
        try:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        except av.error.FFmpegError as error:
            raise MediaError(f"corrupt video in {_name(source)}: {error}") from None
        fps = _frame_rate(stream)
    if not frames:
        raise MediaError(f"{_name(source)} has no decodable video frames")
    return np.stack(frames), fps


def probe_rates(source: Source) -> tuple[float | None, int | None]:
    """(video frame rate, audio sample rate) of a media file, ``None`` for a missing stream;
    nothing is decoded."""
    with _open(source) as container:
        fps = _frame_rate(container.streams.video[0]) if container.streams.video else None
        rate = container.streams.audio[0].sample_rate if container.streams.audio else None
    return fps, rate


def stream_frames(source: Source, chunk: int, fps: int = VIDEO_FPS) -> Iterator[np.ndarray]:
    """Decode a video resampled to ``fps`` by FFmpeg's ``fps`` filter (the nearest frame to each
    output instant, duplicated or dropped), as ``(chunk, H, W, 3) uint8`` RGB chunks (the last
    one may be shorter)."""
    buffer: list[np.ndarray] = []
    with _open(source) as container:
        stream = _video_stream(container, source)
        try:
            graph = av.filter.Graph()
            graph.link_nodes(graph.add_buffer(template=stream), graph.add("fps", f"fps={fps}"),
                             graph.add("format", "rgb24"), graph.add("buffersink")).configure()
            for frame in itertools.chain(container.decode(stream), [None]):  # None: flush
                graph.vpush(frame)
                while (resampled := _pulled(graph)) is not None:
                    buffer.append(resampled.to_ndarray())
                    if len(buffer) == chunk:
                        yield np.stack(buffer)
                        buffer = []
        except av.error.FFmpegError as error:
            raise MediaError(f"corrupt video in {_name(source)}: {error}") from None
    if buffer:
        yield np.stack(buffer)


def _pulled(graph: av.filter.Graph) -> av.VideoFrame | None:
    """The filter graph's next output frame, or ``None`` until more input (or at the end)."""
    try:
        return graph.vpull()
    except (av.error.BlockingIOError, av.error.EOFError):
        return None


def read_audio(source: Source, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """Decode the first audio stream of any file, resampled to mono float32 at ``sample_rate``."""
    with _open(source) as container:
        if not container.streams.audio:
            raise MediaError(f"{_name(source)} has no audio stream")
        stream = container.streams.audio[0]
        duration = float(stream.duration * stream.time_base) if stream.duration else None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = []
        try:
            for frame in container.decode(stream):
                chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(frame))
            chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(None))
        except av.error.FFmpegError as error:
            raise MediaError(f"corrupt audio in {_name(source)}: {error}") from None
    if not chunks:
        raise MediaError(f"{_name(source)} has no decodable audio")
    audio = np.concatenate(chunks).astype(np.float32)
    # Codec frames (AAC: 1024 samples) pad the end; the stream's duration is the true length.
    return audio[: round(duration * sample_rate)] if duration else audio


def encode_wav(audio: np.ndarray, sample_rate: int = AUDIO_RATE) -> bytes:
    """Encode mono float audio in [-1, 1] as 16-bit PCM wav bytes."""
    pcm = (np.clip(np.asarray(audio, dtype=np.float32), -1, 1) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def normalize_track(audio: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over a whole track (float32): what wav2vec2's feature extractor
    does to an utterance, and what :class:`~moee.models.audio.AudioEncoder` expects. Cut into
    clips or windows afterwards, every piece stays on its track's scale, so a quiet stretch
    stays quiet, in a 1-frame training window as in a long video."""
    audio = audio.astype(np.float32)
    return (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)


def check_speech(audio: np.ndarray, what: str = "audio", min_rms: float = 1e-3) -> np.ndarray:
    """Raise a MediaError for empty or silent audio; return it unchanged otherwise."""
    if audio.size == 0:
        raise MediaError(f"{what} is empty")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms < min_rms:
        raise MediaError(f"{what} is silent (RMS {rms:.1e}); give a speech track")
    return audio
