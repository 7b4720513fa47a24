"""The demo's model side, without gradio: the weights, the limits, one generation, and the
temporary files of each browser session."""

from __future__ import annotations

import contextvars
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from moee.data.media import AUDIO_RATE, VIDEO_FPS, MediaError, check_speech, read_audio
from moee.errors import MoEEError, one_line
from moee.inference.animate import load_pipeline, stage_weights
from moee.inference.inputs import prepare_inputs
from moee.inference.pipeline import MoEEPipeline
from moee.inference.portrait import InputError, PortraitSettings
from moee.inference.sampling import (
    PRESET_SAMPLING,
    ProgressCallback,
    SamplerSettings,
    StepProgress,
)
from moee.models.pretrained import Preset
from moee.utils import atomic_path

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_WEIGHTS = "runs/tiny/weights"
MAKE_WEIGHTS: dict[str, str] = {
    "tiny": "python -m moee quickstart",
    "sd15": "python -m moee fit --config configs/backbone.yaml, then each "
            "configs/expert_<emotion>.yaml and configs/gating.yaml",
}
"""The command that makes each preset's weights, named when they are missing."""

STRIP_FRAMES = 8
STRIP_HEIGHT = 128


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: ``max_seconds`` of speech and ``max_file_size`` per
    upload (gradio's notation, ``"20mb"``)."""

    max_seconds: float = 20.0
    max_file_size: str = "20mb"


@dataclass
class Request:
    """One generation as the page asks for it (``image`` and ``audio`` are uploaded files)."""

    image: str | None
    audio: str | None
    emotion: str
    sampling: SamplerSettings = field(default_factory=SamplerSettings)
    paste_back: bool = False
    detect: bool = True


@dataclass
class Generation:
    """A finished video: the mp4, a strip of its frames, and how long it took."""

    video: Path
    strip: Path
    frames: int
    emotion: str
    seconds: float
    first_clip_seconds: float

    def summary(self) -> str:
        """One line for the page."""
        return (f"{self.frames} frames ({self.frames / VIDEO_FPS:.2f} s) for `{self.emotion}` in "
                f"{self.seconds:.1f} s; the first clip was sampled after "
                f"{self.first_clip_seconds:.1f} s")


def missing_weights(weights: list[str], net_preset: str) -> str | None:
    """The one-line message for weights that do not exist (naming the command that makes
    them), or ``None`` when every file is there."""
    if not weights:
        return f"no weights given: make them with `{MAKE_WEIGHTS[net_preset]}`"
    for path in stage_weights(weights):
        if not Path(path).is_file():
            return (f"no trained weights at {path}: make them with "
                    f"`{MAKE_WEIGHTS[net_preset]}`, or pass --weights")
    return None


class DemoModel:
    """The trained network behind the page, loaded once; one :meth:`generate` per request.

    When the weights are missing or cannot be loaded, :attr:`status` says why in one line
    and :meth:`generate` raises :class:`InputError` with it.

    The network is loaded and run on one thread of its own, whichever server thread asks.
    On a CPU, OpenMP (libgomp, which torch's CPU kernels use) gives every thread that runs
    a parallel operation its own team of worker threads, kept for the thread's life; once a
    process holds more of them than it has cores, every parallel region puts its workers to
    sleep and wakes them instead of letting them spin. With generations on the server's
    rotating worker threads, the demo's examples took 1.16x as long on 2 cores, and a
    training step on the main thread of the same process (the test suite) 2.5x.
    :meth:`close` ends the thread.
    """

    def __init__(self, weights: list[str], net_preset: Preset = "tiny", device: str = "auto",
                 limits: Limits | None = None) -> None:
        self.weights, self.net_preset = list(weights), net_preset
        self.limits = limits or Limits()
        self.defaults = PRESET_SAMPLING[net_preset]
        self.pipeline: MoEEPipeline | None = None
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moee-compute")
        self.status = missing_weights(self.weights, net_preset)
        if self.status is None:
            try:
                self.pipeline = self.on_compute_thread(
                    load_pipeline, self.weights, net_preset, self.defaults, device=device,
                    progress=False)
            except MoEEError as error:
                self.status = one_line(error)

    def on_compute_thread(self, work: Callable[..., T], *args, **kwargs) -> T:
        """``work(*args, **kwargs)`` run on the model's own thread, in the caller's context
        (gradio's progress bar lives in a context variable); its result or its exception."""
        context = contextvars.copy_context()
        return self._compute.submit(context.run, work, *args, **kwargs).result()

    def close(self) -> None:
        """End the model's thread (and OpenMP's team with it) once its work is done."""
        self._compute.shutdown(wait=True)

    def __enter__(self) -> DemoModel:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def max_clip_frames(self) -> int:
        """The longest clip the network takes."""
        return self.pipeline.net.config.max_frames if self.pipeline else self.defaults.clip_frames

    def describe(self) -> str:
        """One line: what the page runs, or why it cannot."""
        if self.pipeline is None:
            return self.status
        return (f"{self.net_preset} model from {', '.join(self.weights)} on "
                f"{self.pipeline.device.type}; speech up to {self.limits.max_seconds:g} s")

    def read_speech(self, path: str) -> np.ndarray:
        """The uploaded speech as 16 kHz mono, checked: decodable, not silent, not too long."""
        try:
            speech = read_audio(Path(path).read_bytes())
        except MediaError:
            raise InputError("cannot read the speech: not an audio file that FFmpeg "
                             "decodes") from None
        check_speech(speech, what="the speech")
        seconds = len(speech) / AUDIO_RATE
        if seconds > self.limits.max_seconds:
            raise InputError(f"the speech is {seconds:.1f} s long; this demo animates at most "
                             f"{self.limits.max_seconds:g} s (--max_seconds)")
        return speech

    def generate(self, request: Request, folder: Path,
                 on_step: ProgressCallback | None = None) -> Generation:
        """Animate ``request`` into ``folder`` (an mp4 and a PNG strip, each written whole),
        on the model's thread.

        Raises :class:`InputError`, ``MediaError`` or ``EmotionSpecError`` with one line for
        every input it cannot animate, before any network runs.
        """
        return self.on_compute_thread(self._generate, request, folder, on_step)

    def _generate(self, request: Request, folder: Path,
                  on_step: ProgressCallback | None) -> Generation:
        if self.pipeline is None:
            raise InputError(self.status)
        if not request.image:
            raise InputError("no portrait: upload one, or take one with the webcam")
        if not request.audio:
            raise InputError("no speech: upload an audio file, or record one")
        started = time.perf_counter()
        base = self.pipeline
        portrait = PortraitSettings(detect=request.detect, paste_back=request.paste_back)
        detector = base.detector(portrait.detector) if portrait.detect else None
        speech = self.read_speech(request.audio)
        # the image as bytes: messages then say "the image", not the server's temporary path
        inputs = prepare_inputs(Path(request.image).read_bytes(), speech, request.emotion,
                                base.size, portrait, request.sampling.transition, detector)
        first_clip: list[float] = []

        def step(progress: StepProgress) -> None:
            if progress.clip == 1 and progress.step == progress.steps:
                first_clip.append(time.perf_counter() - started)
            if on_step is not None:
                on_step(progress)

        pipeline = MoEEPipeline(base.net, request.sampling, base.objective, base.size,
                                progress=False, on_step=step)
        animation = pipeline.render(inputs)
        name = f"moee-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        video = animation.save(folder / f"{name}.mp4")
        strip = write_strip(animation.frames, folder / f"{name}-frames.png")
        total = time.perf_counter() - started
        return Generation(video, strip, len(animation.frames), request.emotion.strip(), total,
                          first_clip[0] if first_clip else total)


def write_strip(frames: np.ndarray, path: Path, count: int = STRIP_FRAMES,
                height: int = STRIP_HEIGHT) -> Path:
    """Up to ``count`` evenly spaced frames side by side, ``height`` px high, as a PNG."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round())
    tiles = [Image.fromarray(frames[int(i)]) for i in picks]
    width = round(tiles[0].width * height / tiles[0].height)
    strip = Image.new("RGB", (width * len(tiles), height))
    for index, tile in enumerate(tiles):
        strip.paste(tile.resize((width, height), Image.Resampling.LANCZOS), (index * width, 0))
    with atomic_path(path) as tmp:
        strip.save(tmp, format="PNG")
    return path


class SessionFiles:
    """The temporary files of each browser session, under one root, removed when it ends.

    A session's outputs live in ``root/sessions/<session>``; the uploads it used (in gradio's
    cache, also under ``root``) are removed with it unless another open session uses them
    or they are ``protected`` (the examples' files).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.protected: set[Path] = set()
        self._uploads: dict[Path, set[str]] = {}
        self._lock = threading.Lock()

    def folder(self, session: str, create: bool = True) -> Path:
        """The output folder of ``session``."""
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", session or "anonymous")[:64]
        path = self.root / "sessions" / safe
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def inside(self, path: str | Path) -> bool:
        """Whether ``path`` lies under the root."""
        return Path(path).resolve().is_relative_to(self.root)

    def protect(self, paths: Iterable[str | Path]) -> None:
        """Never remove these files (the examples, shared by every session)."""
        self.protected.update(Path(p).resolve() for p in paths)

    def use(self, session: str, *paths: str | None) -> None:
        """Record that ``session`` uses these uploads."""
        with self._lock:
            for path in paths:
                if path and self.inside(path) and Path(path).resolve() not in self.protected:
                    self._uploads.setdefault(Path(path).resolve(), set()).add(session)

    def close(self, session: str) -> None:
        """Remove the session's folder and the uploads no other session uses."""
        with self._lock:
            orphans = []
            for path, users in list(self._uploads.items()):
                users.discard(session)
                if not users:
                    orphans.append(path)
                    del self._uploads[path]
        shutil.rmtree(self.folder(session, create=False), ignore_errors=True)
        for path in orphans:
            path.unlink(missing_ok=True)
            if path.parent != self.root and not any(path.parent.iterdir()):
                path.parent.rmdir()  # gradio keeps each upload in a folder of its own
        log.info("session %s closed: %d uploads removed", session, len(orphans))
