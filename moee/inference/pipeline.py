"""MoEEPipeline: one portrait + a speech track + an emotion condition → a talking video.

Clip-wise sampling::

    audio (n samples) → T = ceil(n / 640) frames → clips of f frames (the last one padded)
    for clip k (frames [k f, (k + 1) f)), conditions by the Conditioner, as in training:
        reference features  = ReferenceNet(reference latent, motion latents)    once per clip
        audio tokens        = wav2vec2 window [(k f − 2)·640, ((k + 1) f + 2)·640)
        emotion latents     = the track's blend at the clip's centre             once per clip
        z ~ N(0, I) (1 f c h w); for each scheduler step:
            ε_u, ε_a, ε_full = MoEENet([z, z, z], drop = [audio+emotion, emotion, none])  ONE call
            ε = ε_u + s_a (ε_a − ε_u) + s_e (ε_full − ε_a)
              (a composed compound: one full branch per emotion, ε_full → Σ_k λ_k ε_k)
            z = scheduler.step(ε, t, z)
        motion latents ← z[:, −2:]   (float latents, never through a codec)
        frames += VAE.decode(z)

The first clip's motion latents are the reference latent repeated, as in training (motion
frames at a clip's start repeat its first frame). The sampler and guidance are in
:mod:`moee.inference.sampling`, the checked inputs in :mod:`moee.inference.inputs`, the
:class:`~moee.inference.outputs.Animation` it returns in :mod:`moee.inference.outputs`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import get_args

import numpy as np
import torch
from tqdm.auto import tqdm

from moee.data.batch import to_numpy_frames
from moee.data.faces import FaceDetector, make_detector
from moee.data.media import SAMPLES_PER_FRAME, VIDEO_FPS, normalize_track
from moee.data.sampling import MOTION_FRAMES, speech_window, window_audio
from moee.emotions import EmotionCondition
from moee.inference.conditions import EmotionTrack, Routing, batch_routing, emotion_inputs
from moee.inference.inputs import AudioSource, PreparedInputs, prepare_inputs
from moee.inference.outputs import Animation
from moee.inference.portrait import ImageSource, InputError, PortraitSettings
from moee.inference.sampling import (
    ProgressCallback,
    SamplerSettings,
    SpeechRouting,
    StepProgress,
    face_region_weights,
    make_scheduler,
)
from moee.models.conditioner import Conditioner, Conditions
from moee.models.moee_net import MoEENet, MoEENetConfig
from moee.models.objective import DiffusionObjective
from moee.models.weights import check_parallel_exports, load_net_weights, trained_objective

log = logging.getLogger(__name__)


def load_stage_weights(net: MoEENet, paths: list[str | os.PathLike]) -> set[str]:
    """Load stage exports (safetensors) or Lightning checkpoints into ``net``, in order, and
    return the names of the weights they held.

    Later files override earlier ones (backbone, the six experts, then the gates); exports of
    parallel stages must agree (:func:`~moee.models.weights.check_parallel_exports`).
    """
    check_parallel_exports(paths)
    loaded: set[str] = set()
    for path in paths:
        loaded |= load_net_weights(net, path,
                                   hint=": train the stages first or fix the weights paths")
    return loaded


_CONDITION_NAMES = {"neutral": "neutral", "mixture": "a mix", "au": "AUs", "text": "text:",
                    "speech": "speech"}


def untrained_need(condition: EmotionCondition, gated: bool, trained: set[str]) -> str | None:
    """What ``condition`` needs that no loaded weight in ``trained`` (MoEENet names) holds,
    or ``None``: the learned gates when it is ``gated`` (its routing, or a timeline's blend
    across routings, mixes experts through them), and its own Emotion-to-Latents path for
    AUs, a text or the speech. Both come from the gating stage."""
    if gated and not any(".emotion." in name and "_gate." in name for name in trained):
        return "the learned gates"
    path = f"emotion_to_latents.to_queries.{condition.kind}."
    if condition.kind in ("au", "text", "speech") and not any(
            name.startswith(path) for name in trained):
        return f"the {_CONDITION_NAMES[condition.kind]} path of Emotion-to-Latents"
    return None


def branch_emotions(branches: list[dict], count: int) -> dict:
    """The emotion fields of :class:`Conditions` for the guidance branches, in order: each
    branch's part (:meth:`MoEEPipeline.emotion_parts`) for its ``count`` videos, stacked."""
    latents = torch.cat([branch["emotion"] for branch in branches])
    experts = [branch["expert"] for branch in branches]
    if experts[0] is None or (isinstance(experts[0], int) and len(set(experts)) == 1):
        expert = experts[0]  # the learned gates or an explicit mixture, or one expert for all
    else:  # per sample: (b,) experts or (b e) shares
        expert = torch.cat([torch.full((count,), e, device=latents.device)
                            if isinstance(e, int) else e for e in experts])
    weights = [branch["weights"] for branch in branches]
    return {"emotion": latents, "expert": expert,
            "weights": None if weights[0] is None else torch.cat(weights)}


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
        trained: names of the weights loaded from stage files (:meth:`from_weights`); an
            emotion that needs weights none of them held is refused (:meth:`check_trained`).
            ``None``: the network is taken as trained throughout.
    """

    def __init__(
        self,
        net: MoEENet,
        settings: SamplerSettings | None = None,
        objective: DiffusionObjective | None = None,
        size: int | None = None,
        progress: bool = True,
        on_step: ProgressCallback | None = None,
        trained: set[str] | None = None,
    ) -> None:
        self.net = net.eval()
        self.trained = trained
        self.conditioner = Conditioner(net)
        self.settings = settings = settings or SamplerSettings()
        self.objective = objective or DiffusionObjective()
        self.size = size or net.vae.sample_size
        self.progress = progress
        self.on_step = on_step
        if settings.steps < 1:
            raise InputError(f"steps must be ≥ 1, got {settings.steps}")
        if not 0 < settings.strength <= 1:
            raise InputError(f"strength must be in (0, 1], got {settings.strength}")
        if settings.compound_regions is not None and not 0 < settings.compound_regions < 1:
            raise InputError(f"compound_regions must be in (0, 1) (the face crop's row between "
                             f"upper and lower face), got {settings.compound_regions}")
        if settings.emotion_onset < 0:
            raise InputError(f"emotion_onset must be ≥ 0 seconds (0: the full emotion from the "
                             f"first frame), got {settings.emotion_onset}")
        if settings.compound_regions is not None and settings.compose_compounds is None:
            raise InputError("compound_regions splits composed compounds by face region: set "
                             "compose_compounds too (2 in the tiny preset)")
        if settings.speech_routing not in get_args(SpeechRouting):
            raise InputError(f"speech_routing must be one of {get_args(SpeechRouting)}, got "
                             f"{settings.speech_routing!r}")
        if settings.speech_routing == "heard" and \
                not net.emotion_to_latents.speech_encoder.hears_every_emotion:
            raise InputError("speech_routing 'heard' needs a speech-emotion classifier that "
                             "hears all six basic emotions; this network's does not: use "
                             "speech_routing 'gates'")
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
        return cls(model, trained=load_stage_weights(model, weights), **kwargs)

    def check_trained(self, track: EmotionTrack) -> None:
        """Refuse, in one line (:class:`InputError`), an emotion track that needs weights the
        loaded stage files did not hold (:func:`untrained_need`): neutral, mixes, AUs, text,
        speech and timelines across emotions need the gating stage's export; basic and
        compound labels need the experts alone. A network of one attention (``num_experts:
        1``, w/o MoE) has no gates to need."""
        if self.trained is None:
            return
        conditions = track.conditions
        across = len({Routing.of(c) for c in conditions}) > 1
        routed = self.net.config.num_experts > 1  # one attention (w/o MoE) has no gates
        for condition in conditions:
            gated = across or Routing.of(condition).kind in ("gates", "weights")
            need = untrained_need(condition, routed and gated, self.trained)
            if need is not None:
                what = (_CONDITION_NAMES.get(condition.kind, condition.name) if not across
                        else "a timeline across emotions")
                raise InputError(
                    f"emotion {what!r} needs {need}, which none of the loaded weights "
                    "trained: add the gating stage's export (gating.safetensors) to the "
                    "weights, or ask for a basic or compound emotion")

    def routing_kind(self, condition: EmotionCondition) -> str:
        """The kind of routing (:attr:`Routing.kind`) this pipeline gives ``condition``:
        videos sampled together (:meth:`generate_many`) need one kind."""
        if condition.kind == "speech" and self.settings.speech_routing == "heard":
            return "expert"
        return Routing.of(condition).kind

    def heard_routing(self, speech: torch.Tensor) -> Routing:
        """The expert of the basic emotion the speech-emotion encoder hears most in ``speech``
        (1, s) (``speech_routing: heard``)."""
        heard = self.net.emotion_to_latents.speech_encoder(speech.to(self.device, self.dtype))
        return Routing(expert=int(heard.emotions[0].argmax()))

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
        for track in tracks:
            self.check_trained(track)
        if len({len(a) for a in audios}) != 1:
            raise ValueError("videos sampled together need audio tracks of one length")
        count = len(audios)
        generators = generators or [None] * count
        if len(tracks) != count or len(generators) != count:
            raise ValueError(f"{count} audio tracks need as many emotion tracks and generators, "
                             f"got {len(tracks)} and {len(generators)}")
        total = self.num_frames(len(audios[0]))
        clips = -(-total // f)
        audio = np.stack([np.pad(normalize_track(a), (0, clips * f * SAMPLES_PER_FRAME - len(a)))
                          for a in audios])
        image = reference[None].to(self.device, self.dtype).expand(count, -1, -1, -1)  # n 3 S S
        latent = net.encode_frames(image[:1, None], sample=False)[:, 0].expand(count, -1, -1, -1)
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
                parts = self.emotion_parts([
                    self.clip_emotion(track, (start + f / 2) / VIDEO_FPS, speech[i : i + 1], cache)
                    for i, (track, cache) in enumerate(zip(tracks, caches))])
                conditions = self.conditioner.encode(
                    image, motion, reference_latent=latent,
                    audio=window.to(self.device, self.dtype))
                latents = self.denoise(conditions, parts, f, latent, generators, bar,
                                       (k + 1, clips), self.settings.onset_weights(start, f)
                                       ).to(self.dtype)  # the sampler's float32
                motion = latents[:, -MOTION_FRAMES:]
                frames.append(to_numpy_frames(net.vae.decode(latents)))
        return [np.concatenate([clip[i] for clip in frames])[:total] for i in range(count)]

    def clip_emotion(
        self,
        track: EmotionTrack,
        seconds: float,
        speech: torch.Tensor,
        cache: dict[tuple[int, int], torch.Tensor],
    ) -> list[tuple[torch.Tensor, Routing, torch.Tensor | None]]:
        """Emotion latents (1 m c), routing and guidance weights of each emotion part of the
        clip centred at ``seconds``: one part (weights ``None``, or its intensity twice with
        ``intensity_guidance``), or a composed compound's two basic emotions (main first) when
        ``compose_compounds`` is set, each with its ``(upper face, lower face)`` guidance
        weights (2,) (:meth:`~moee.inference.sampling.SamplerSettings.part_weights`).

        ``speech`` is the clip's audio (1, f * 640); latents of conditions that do not depend on
        it are kept in ``cache`` ((entry index, part) → latents) across clips.
        """
        blend = track.blend(seconds)
        routing = track.routing(blend)
        if self.settings.speech_routing == "heard" and all(
                track.entries[index][1].kind == "speech" for index, _ in blend):
            routing = self.heard_routing(speech)
        composed = self.settings.compose_compounds is not None and routing.kind == "shares"
        weighted = composed or self.settings.intensity_guidance
        parts = []
        for part in range(2 if composed else 1):
            latents, weights = 0, torch.zeros(2) if weighted else None
            for index, share in blend:
                condition = track.entries[index][1]
                if composed:  # every entry is a compound of the same two emotions
                    weights += share * torch.tensor(self.settings.part_weights(condition)[part])
                    condition = condition.compound_parts()[part]
                elif weighted:
                    weights += share * condition.intensity
                if (index, part) not in cache or condition.kind == "speech":
                    inputs = emotion_inputs(condition, speech.to(self.dtype), self.device)
                    cache[index, part] = self.conditioner.encode_emotion(inputs)
                latents = latents + share * cache[index, part]
            parts.append((latents, Routing.of(condition) if composed else routing, weights))
        return parts

    def emotion_parts(self, videos: list[list[tuple]]) -> list[dict]:
        """The ``emotion`` latents, ``expert`` and ``weights`` of :class:`Conditions` for each
        emotion part of a batch of videos (see :meth:`clip_emotion`), and a composed part's
        ``face_weights`` (b 2)."""
        if len({len(parts) for parts in videos}) != 1:
            raise ValueError("videos sampled together must all be composed compounds or none: "
                             "sample compounds in their own batches")
        return [{"emotion": torch.cat([parts[p][0] for parts in videos]),
                 **batch_routing([parts[p][1] for parts in videos], self.device),
                 "face_weights": None if videos[0][p][2] is None
                 else torch.stack([parts[p][2] for parts in videos])}
                for p in range(len(videos[0]))]

    def denoise(
        self,
        conditions: Conditions,
        parts: list[dict],
        num_frames: int,
        reference_latent: torch.Tensor,
        generators: list[torch.Generator | None],
        bar: tqdm,
        clip: tuple[int, int] = (1, 1),
        onset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the sampler on fresh noise for one clip of ``n`` videos; returns clean latents
        (n f c h w).

        ``conditions`` holds the videos' reference and audio, ``parts`` their emotion parts
        (:meth:`emotion_parts`); every guidance branch of every video runs in one batched
        network call, two emotion parts with composed guidance
        (:attr:`SamplerSettings.compound_guidance`, each part weighted per face region by its
        ``face_weights``). ``reference_latent`` (n c h w) is where
        sampling starts when ``strength`` < 1; video ``i``'s noise comes from
        ``generators[i]``. ``clip`` is ``(number, count)`` of this clip (1-based), reported to
        ``on_step``.
        """
        settings = self.settings
        guidance = settings.guidance if len(parts) == 1 else settings.compound_guidance
        weights = [part["face_weights"] for part in parts]
        count = len(generators)
        if len(parts) == 1:  # weighted by intensity_guidance or the onset, or plain
            if onset is None and (weights[0] is None or bool((weights[0] == 1).all())):
                weights = [None]  # full intensity: the plain guidance's branches
            else:
                guidance = replace(guidance, parts=(1.0,))
                weights = [torch.ones(count, 2) if weights[0] is None else weights[0]]
        split = settings.compound_regions if len(parts) > 1 else None
        part_weights = None if weights[0] is None else torch.stack([
            face_region_weights(w, reference_latent.shape[-2], split)
            for w in weights]).to(self.device)  # K b 1 1 h 1
        if onset is not None:
            part_weights = part_weights * onset.to(self.device).view(1, 1, -1, 1, 1, 1)
        branches = torch.tensor(guidance.branches, device=self.device)  # n 2
        n = len(branches)
        batched = replace(
            conditions.repeat(n),
            **branch_emotions([parts[p] for p in guidance.branch_parts], count),
            drop_audio=branches[:, 0].repeat_interleave(count),
            drop_emotion=branches[:, 1].repeat_interleave(count),
        )
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
                                  batched)
            prediction = guidance.combine(prediction.float().unflatten(0, (n, count)),
                                          part_weights)
            # the offered samplers step deterministically: no per-video generator is needed here
            latents = scheduler.step(prediction, t, latents).prev_sample
            bar.update()
            if self.on_step is not None:
                self.on_step(StepProgress(*clip, step, len(timesteps)))
        return latents
