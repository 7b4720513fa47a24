"""MoEEPipeline: one portrait + a speech track + an emotion condition → a talking video.

Clip-wise sampling::

    audio (n samples) → T = ceil(n / 640) frames → clips of f frames (the last one padded)
    for clip k (frames [k f, (k + 1) f)):
        reference features  = ReferenceNet(reference latent, motion latents)    once per clip
        audio tokens        = wav2vec2 window [(k f − 2)·640, ((k + 1) f + 2)·640)
        emotion latents     = the track's blend at the clip's centre             once per clip
        z ~ N(0, I) (1 f c h w); for each scheduler step:
            ε_u, ε_a, ε_full = MoEENet([z, z, z], drop = [audio+emotion, emotion, none])  ONE call
            ε = ε_u + s_a (ε_a − ε_u) + s_e (ε_full − ε_a)
            z = scheduler.step(ε, t, z)
        motion latents ← z[:, −2:]   (float latents, never through a codec)
        frames += VAE.decode(z)

The first clip's motion latents are the reference latent repeated, as in training (motion
frames at a clip's start repeat its first frame).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from tqdm.auto import tqdm

from moee.data.batch import to_numpy_frames
from moee.data.faces import FaceDetector, make_detector
from moee.data.media import (
    AUDIO_RATE,
    SAMPLES_PER_FRAME,
    VIDEO_FPS,
    check_speech,
    read_audio,
    write_mp4,
)
from moee.data.sampling import MOTION_FRAMES, speech_window, window_audio
from moee.emotions import EmotionCondition
from moee.inference.conditions import EmotionTrack, Routing, batch_routing, emotion_inputs
from moee.inference.portrait import (
    ImageSource,
    InputError,
    Portrait,
    PortraitSettings,
    load_image,
    prepare_portrait,
)
from moee.models.moee_net import MoEENet, MoEENetConfig
from moee.models.objective import DiffusionObjective
from moee.models.weights import check_parallel_exports, load_net_weights, trained_objective
from moee.utils import atomic_path

log = logging.getLogger(__name__)

SamplerName = Literal["ddim", "dpmpp", "euler"]
AudioSource = str | os.PathLike | bytes | np.ndarray

_SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict]] = {
    "ddim": (DDIMScheduler, {}),
    "dpmpp": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": (EulerDiscreteScheduler, {}),
}

# (drop_audio, drop_emotion) of the guidance branches
UNCONDITIONAL, AUDIO_ONLY, FULL = (True, True), (False, True), (False, False)


class StepProgress(NamedTuple):
    """Where sampling stands after a denoising step: ``step`` of ``steps`` in ``clip`` of
    ``clips`` (1-based)."""

    clip: int
    clips: int
    step: int
    steps: int

    @property
    def fraction(self) -> float:
        """Share of all the video's denoising steps done, in (0, 1]."""
        return ((self.clip - 1) * self.steps + self.step) / (self.clips * self.steps)


ProgressCallback = Callable[[StepProgress], None]


def make_scheduler(name: SamplerName, objective: DiffusionObjective) -> SchedulerMixin:
    """A diffusers sampler configured from the training objective's schedule.

    Betas, prediction type and ``timestep_spacing="trailing"`` come from the objective's
    DDPM scheduler config; ``name`` is ``ddim``, ``dpmpp`` (DPM-Solver++ 2M) or ``euler``.
    """
    if name not in _SCHEDULERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(_SCHEDULERS)}")
    cls, extra = _SCHEDULERS[name]
    return cls.from_config(objective.scheduler.config, **extra)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance with separate audio and emotion scales.

    ``ε = ε_u + audio (ε_a − ε_u) + emotion (ε_full − ε_a)`` with ε_u (no audio, no emotion),
    ε_a (audio only) and ε_full. Only the branches the scales need are run: all three, two when
    the scales are equal (``ε_u + s (ε_full − ε_u)``), one when both are 1.
    """

    audio: float = 3.5
    emotion: float = 2.5

    @property
    def branches(self) -> tuple[tuple[bool, bool], ...]:
        """``(drop_audio, drop_emotion)`` of each branch, in batch order."""
        if self.audio == self.emotion == 1.0:
            return (FULL,)
        if self.audio == self.emotion:
            return (UNCONDITIONAL, FULL)
        return (UNCONDITIONAL, AUDIO_ONLY, FULL)

    def combine(self, predictions: torch.Tensor) -> torch.Tensor:
        """predictions (n b ...) in :attr:`branches` order → the guided prediction (b ...)."""
        if len(predictions) == 1:
            return predictions[0]
        if len(predictions) == 2:
            uncond, full = predictions
            return uncond + self.audio * (full - uncond)
        uncond, audio, full = predictions
        return uncond + self.audio * (audio - uncond) + self.emotion * (full - audio)


@dataclass
class SamplerSettings:
    """Sampling settings of the pipeline (YAML-fillable).

    Attributes:
        sampler: ``dpmpp`` (DPM-Solver++ 2M), ``ddim`` or ``euler``.
        steps: denoising steps per clip.
        audio_guidance: classifier-free guidance scale of the audio (lip sync).
        emotion_guidance: classifier-free guidance scale of the emotion condition.
        clip_frames: frames per clip ``f`` (the model's training window).
        transition: seconds over which an emotion timeline blends into its next entry.
        strength: where sampling starts. ``1`` (the paper): from pure noise. Below 1: from the
            reference latent noised to that fraction of the step schedule (as diffusers'
            img2img pipelines do), running only the last ``round(steps * strength)`` steps:
            the reference then anchors identity and colours, which small or briefly trained
            models cannot rebuild from noise.
        seed: seed of the noise (a job may give its own).
    """

    sampler: SamplerName = "dpmpp"
    steps: int = 25
    audio_guidance: float = 3.5
    emotion_guidance: float = 2.5
    clip_frames: int = 16
    transition: float = 1.0
    strength: float = 1.0
    seed: int = 0

    @property
    def guidance(self) -> Guidance:
        """The guidance scales as a :class:`Guidance`."""
        return Guidance(self.audio_guidance, self.emotion_guidance)


def load_stage_weights(net: MoEENet, paths: list[str | os.PathLike]) -> None:
    """Load stage exports (safetensors) or Lightning checkpoints into ``net``, in order.

    Later files override earlier ones (backbone, the six experts, then the gates); exports of
    parallel stages must agree (:func:`~moee.stages.base.check_parallel_exports`).
    """
    check_parallel_exports(paths)
    for path in paths:
        load_net_weights(net, path, hint=": train the stages first or fix the weights paths")


@dataclass
class Animation:
    """A generated video: ``frames`` ``(T, H, W, 3) uint8`` at ``fps``, with its 16 kHz audio."""

    frames: np.ndarray
    audio: np.ndarray
    fps: int = VIDEO_FPS

    def save(self, path: str | os.PathLike, frames_dir: str | os.PathLike | None = None) -> Path:
        """Write an H.264 mp4 with the audio muxed in (atomically) and optionally PNG frames.

        PNGs (``000000.png`` …) are written to a temporary folder renamed to ``frames_dir``.
        """
        if frames_dir is not None:
            with atomic_path(frames_dir, directory=True) as folder:
                for index, frame in enumerate(self.frames):
                    Image.fromarray(frame).save(folder / f"{index:06d}.png")
        return write_mp4(path, self.frames, self.fps, audio=self.audio, sample_rate=AUDIO_RATE)


def read_speech(source: AudioSource) -> np.ndarray:
    """Speech from any audio file (or a 16 kHz mono array) as float32 16 kHz mono.

    Raises :class:`moee.data.media.MediaError` for unreadable, empty or silent audio.
    """
    if isinstance(source, np.ndarray):
        audio, name = np.asarray(source, dtype=np.float32).reshape(-1), "the audio"
    else:
        name = "audio" if isinstance(source, bytes) else f"audio {os.fspath(source)!r}"
        audio = read_audio(source, sample_rate=AUDIO_RATE)
    return check_speech(audio, what=name)


@dataclass
class PreparedInputs:
    """The checked inputs of one animation: face crop, speech, emotion track, framing."""

    portrait: Portrait
    speech: np.ndarray
    track: EmotionTrack
    settings: PortraitSettings


def prepare_inputs(
    image: ImageSource,
    audio: AudioSource,
    emotion: str | EmotionCondition,
    size: int,
    portrait: PortraitSettings | None = None,
    transition: float = 1.0,
    detector: FaceDetector | None = None,
) -> PreparedInputs:
    """Read and check every input before any network runs, cheapest first.

    Raises, each with a one-line message: ``EmotionSpecError`` (unknown emotion),
    ``MediaError`` (unreadable or silent audio), :class:`InputError` (unreadable image, no face
    or several faces).
    """
    portrait = portrait or PortraitSettings()
    track = EmotionTrack.parse(emotion, transition)
    speech = read_speech(audio)
    name = repr(os.fspath(image)) if isinstance(image, str | os.PathLike) else "the image"
    photo = load_image(image, portrait.max_side, portrait.background)
    face = prepare_portrait(photo, size, portrait, detector, name)
    return PreparedInputs(face, speech, track, portrait)


class MoEEPipeline:
    """Animate a portrait with speech under an emotion condition (see the module docstring).

    Args:
        net: the MoEE network with its trained weights (eval mode is set here).
        settings: sampler, steps, guidance, clip length, timeline transition, seed.
        objective: the training objective whose schedule configures the sampler.
        size: side of the square face crop in pixels (default: the VAE's sample size).
        progress: show a tqdm bar over clips × steps.
        on_step: called after every denoising step with its :class:`StepProgress` (a web
            page's progress bar).
    """

    def __init__(
        self,
        net: MoEENet,
        settings: SamplerSettings | None = None,
        objective: DiffusionObjective | None = None,
        size: int | None = None,
        progress: bool = True,
        on_step: ProgressCallback | None = None,
    ) -> None:
        self.net = net.eval()
        self.settings = settings = settings or SamplerSettings()
        self.objective = objective or DiffusionObjective()
        self.size = size or net.vae.sample_size
        self.progress = progress
        self.on_step = on_step
        if settings.steps < 1:
            raise InputError(f"steps must be ≥ 1, got {settings.steps}")
        if not 0 < settings.strength <= 1:
            raise InputError(f"strength must be in (0, 1], got {settings.strength}")
        if not MOTION_FRAMES <= settings.clip_frames <= net.config.max_frames:
            raise InputError(f"clip_frames must be in [{MOTION_FRAMES}, "
                             f"{net.config.max_frames}], got {settings.clip_frames}")
        if self.size % (2 * net.vae.downsample):
            raise InputError(f"size must be a multiple of {2 * net.vae.downsample}, "
                             f"got {self.size}")
        self.scheduler = make_scheduler(settings.sampler, self.objective)
        self._detectors: dict[str, FaceDetector] = {}

    @classmethod
    def from_weights(
        cls, net: MoEENetConfig, weights: list[str | os.PathLike], **kwargs
    ) -> MoEEPipeline:
        """Build the network from its config, load ``weights`` in order, wrap it in a pipeline.

        Parts built with random weights (the tiny preset's frozen encoders) are drawn from a
        seed fixed per part (``moee.models.pretrained``), so they match the training stages.
        Without an ``objective``, the one recorded in the stage exports configures the sampler.
        """
        check_parallel_exports(weights)  # before building a network they cannot serve
        if kwargs.get("objective") is None:
            kwargs["objective"] = trained_objective(weights)
        model = MoEENet(net)
        load_stage_weights(model, weights)
        return cls(model, **kwargs)

    @property
    def device(self) -> torch.device:
        """Device of the network."""
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the network."""
        return next(self.net.parameters()).dtype

    def detector(self, name: str) -> FaceDetector:
        """The face detector ``name``, built once."""
        if name not in self._detectors:
            self._detectors[name] = make_detector(name)
        return self._detectors[name]

    def __call__(
        self,
        image: ImageSource,
        audio: AudioSource,
        emotion: str | EmotionCondition = "neutral",
        *,
        portrait: PortraitSettings | None = None,
        seed: int | None = None,
    ) -> Animation:
        """Animate ``image`` (any image) with ``audio`` (any audio file or a 16 kHz array).

        ``emotion`` is any :func:`moee.emotions.parse_emotion` spec or a timeline
        (``"0s:neutral,3s:happy"``). See :func:`prepare_inputs` for the checks made first.
        """
        portrait = portrait or PortraitSettings()
        detector = self.detector(portrait.detector) if portrait.detect else None
        inputs = prepare_inputs(image, audio, emotion, self.size, portrait,
                                self.settings.transition, detector)
        return self.render(inputs, seed)

    def render(self, inputs: PreparedInputs, seed: int | None = None) -> Animation:
        """Animate checked inputs; ``seed`` overrides the settings' seed."""
        generator = torch.Generator().manual_seed(self.settings.seed if seed is None else seed)
        face = inputs.portrait
        frames = self.generate(face.reference(), inputs.speech, inputs.track, generator)
        if inputs.settings.paste_back:
            frames = face.paste(frames, inputs.settings.feather)
        return Animation(frames=frames, audio=inputs.speech)

    @property
    def steps_per_clip(self) -> int:
        """Network evaluations per clip: all ``steps``, or their last ``strength`` share."""
        return max(1, round(self.settings.steps * self.settings.strength))

    def num_frames(self, num_samples: int) -> int:
        """Video frames ``T = ceil(samples / 640)`` for an audio track."""
        return -(-num_samples // SAMPLES_PER_FRAME)

    @torch.no_grad()
    def generate(
        self,
        reference: torch.Tensor,
        audio: np.ndarray,
        track: EmotionTrack,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """Sample the video of a prepared reference ``(3, S, S)`` in [-1, 1] and 16 kHz audio.

        Returns ``(T, S, S, 3) uint8`` with ``T = ceil(len(audio) / 640)``.
        """
        return self.generate_many(reference, [audio], [track], [generator])[0]

    @torch.no_grad()
    def generate_many(
        self,
        reference: torch.Tensor,
        audios: list[np.ndarray],
        tracks: list[EmotionTrack],
        generators: list[torch.Generator | None] | None = None,
    ) -> list[np.ndarray]:
        """Several videos of one reference in one batch: video ``i`` speaks ``audios[i]`` with
        emotion ``tracks[i]``, its noise drawn from ``generators[i]``, exactly as
        :meth:`generate` would sample it alone (one network call per step for all of them).

        The audios have one length, and the tracks route the Emotion MoE alike clip by clip
        (all single experts, all compounds' expert shares, all explicit mixtures, or all the
        learned gates).
        """
        net, f, steps = self.net, self.settings.clip_frames, self.steps_per_clip
        if len({len(a) for a in audios}) != 1:
            raise ValueError("videos sampled together need audio tracks of one length")
        count = len(audios)
        generators = generators or [None] * count
        if len(tracks) != count or len(generators) != count:
            raise ValueError(f"{count} audio tracks need as many emotion tracks and generators, "
                             f"got {len(tracks)} and {len(generators)}")
        total = self.num_frames(len(audios[0]))
        clips = -(-total // f)
        audio = np.stack([np.pad(a, (0, clips * f * SAMPLES_PER_FRAME - len(a))) for a in audios])
        image = reference[None].to(self.device, self.dtype).expand(count, -1, -1, -1)  # n 3 S S
        latent = net.vae.encode(image[:1, None], sample=False)[:, 0].expand(count, -1, -1, -1)
        motion = latent[:, None].repeat(1, MOTION_FRAMES, 1, 1, 1)  # n r c h w
        caches: list[dict[int, torch.Tensor]] = [{} for _ in range(count)]
        frames = []
        with tqdm(total=clips * steps, desc="animate", unit="step", disable=not self.progress,
                  dynamic_ncols=True) as bar:
            for k in range(clips):
                bar.set_postfix_str(f"clip {k + 1}/{clips}")
                start = k * f
                window = torch.from_numpy(np.stack([window_audio(a, start, f) for a in audio]))
                speech = torch.from_numpy(np.stack([speech_window(a, start, f) for a in audio]))
                emotions, routings = zip(*(
                    self.clip_emotion(track, (start + f / 2) / VIDEO_FPS, speech[i : i + 1], cache)
                    for i, (track, cache) in enumerate(zip(tracks, caches))))
                conditions = {
                    "reference": net.encode_reference(image, motion, reference_latent=latent),
                    "audio_tokens": net.encode_audio(window.to(self.device, self.dtype)),
                    "emotion_latents": torch.cat(emotions),
                    **batch_routing(routings, self.device),
                }
                latents = self.denoise(conditions, f, latent, generators, bar, (k + 1, clips))
                motion = latents[:, -MOTION_FRAMES:]
                frames.append(to_numpy_frames(net.vae.decode(latents.to(self.dtype))))
        return [np.concatenate([clip[i] for clip in frames])[:total] for i in range(count)]

    def clip_emotion(
        self,
        track: EmotionTrack,
        seconds: float,
        speech: torch.Tensor,
        cache: dict[int, torch.Tensor],
    ) -> tuple[torch.Tensor, Routing]:
        """Emotion latents (1 m c) and routing of the clip centred at ``seconds``.

        ``speech`` is the clip's audio (1, f * 640); latents of conditions that do not depend on
        it are kept in ``cache`` (entry index → latents) across clips.
        """
        blend = track.blend(seconds)
        latents = 0
        for index, share in blend:
            condition = track.entries[index][1]
            if index not in cache or condition.kind == "speech":
                inputs = emotion_inputs(condition, speech.to(self.dtype), self.device)
                cache[index] = self.net.encode_emotion(inputs)
            latents = latents + share * cache[index]
        return latents, track.routing(blend)

    def denoise(
        self,
        conditions: dict,
        num_frames: int,
        reference_latent: torch.Tensor,
        generators: list[torch.Generator | None],
        bar: tqdm,
        clip: tuple[int, int] = (1, 1),
    ) -> torch.Tensor:
        """Run the sampler on fresh noise for one clip of ``n`` videos; returns clean latents
        (n f c h w).

        ``conditions`` holds the videos' ``reference``, ``audio_tokens``, ``emotion_latents``,
        ``expert`` and ``weights``; every guidance branch of every video runs in one batched
        network call. ``reference_latent`` (n c h w) is where sampling starts when ``strength``
        < 1; video ``i``'s noise comes from ``generators[i]``. ``clip`` is ``(number, count)``
        of this clip (1-based), reported to ``on_step``.
        """
        guidance = self.settings.guidance
        count = len(generators)
        branches = torch.tensor(guidance.branches, device=self.device)  # n 2
        n = len(branches)
        weights, expert = conditions["weights"], conditions["expert"]
        batched = {
            "reference": conditions["reference"].repeat(n),
            "audio_tokens": conditions["audio_tokens"].repeat(n, 1, 1, 1),
            "emotion_latents": conditions["emotion_latents"].repeat(n, 1, 1),
            "expert": expert.repeat(n, *(1,) * (expert.dim() - 1))  # (b,) or (b e) shares
            if isinstance(expert, torch.Tensor) else expert,
            "weights": None if weights is None else weights.repeat(n, 1),
            "drop_audio": branches[:, 0].repeat_interleave(count),
            "drop_emotion": branches[:, 1].repeat_interleave(count),
        }
        scheduler = self.scheduler
        scheduler.set_timesteps(self.settings.steps, device=self.device)
        shape = (1, num_frames, *reference_latent.shape[1:])
        noise = torch.cat([torch.randn(shape, generator=g) for g in generators]).to(self.device)
        timesteps = scheduler.timesteps
        if self.settings.strength < 1:
            skipped = self.settings.steps - self.steps_per_clip
            timesteps = timesteps[skipped * scheduler.order:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(skipped * scheduler.order)
            start = reference_latent.float()[:, None].expand_as(noise)
            latents = scheduler.add_noise(start, noise, timesteps[:1])  # n f c h w, float32
        else:
            latents = noise * scheduler.init_noise_sigma
        for step, t in enumerate(timesteps, 1):
            model_input = scheduler.scale_model_input(latents, t).to(self.dtype)
            prediction = self.net(model_input.repeat(n, 1, 1, 1, 1), t.repeat(n * count),
                                  **batched)
            prediction = guidance.combine(prediction.float().unflatten(0, (n, count)))
            # the offered samplers step deterministically: no per-video generator is needed here
            latents = scheduler.step(prediction, t, latents).prev_sample
            bar.update()
            if self.on_step is not None:
                self.on_step(StepProgress(*clip, step, len(timesteps)))
        return latents
