"""How the pipeline samples: the diffusers sampler, classifier-free guidance with separate audio
and emotion scales, the sampling settings, and the progress of a video's denoising steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from moee.data.media import VIDEO_FPS
from moee.emotions import EmotionCondition
from moee.models.objective import DiffusionObjective

SamplerName = Literal["ddim", "dpmpp", "euler"]
SpeechRouting = Literal["gates", "heard"]

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

    With ``parts`` (λ_1 … λ_K), the emotion is composed of K parts, each with its own full
    branch ε_k (its own emotion latents and expert), as in composable diffusion (Liu et al.,
    2022): ``ε = ε_u + audio (ε_a − ε_u) + emotion Σ_k λ_k (ε_k − ε_a)``.
    """

    audio: float = 3.5
    emotion: float = 2.5
    parts: tuple[float, ...] = ()

    @property
    def branches(self) -> tuple[tuple[bool, bool], ...]:
        """``(drop_audio, drop_emotion)`` of each branch, in batch order."""
        if self.parts:
            return (UNCONDITIONAL, AUDIO_ONLY) + (FULL,) * len(self.parts)
        if self.audio == self.emotion == 1.0:
            return (FULL,)
        if self.audio == self.emotion:
            return (UNCONDITIONAL, FULL)
        return (UNCONDITIONAL, AUDIO_ONLY, FULL)

    @property
    def branch_parts(self) -> tuple[int, ...]:
        """The emotion part each branch is conditioned on (the first where it is dropped)."""
        return (0, 0, *range(len(self.parts))) if self.parts else (0,) * len(self.branches)

    def combine(self, predictions: torch.Tensor,
                part_weights: torch.Tensor | None = None) -> torch.Tensor:
        """predictions (n b ...) in :attr:`branches` order → the guided prediction (b ...).

        ``part_weights`` (K b ...), broadcastable to one prediction, replace the parts' λ_k by
        per-video, per-position weights (:func:`face_region_weights`)."""
        if self.parts:
            uncond, audio, *full = predictions
            weights = self.parts if part_weights is None else part_weights
            emotion = sum(weight * (part - audio) for weight, part in zip(weights, full))
            return uncond + self.audio * (audio - uncond) + self.emotion * emotion
        if len(predictions) == 1:
            return predictions[0]
        if len(predictions) == 2:
            uncond, full = predictions
            return uncond + self.audio * (full - uncond)
        uncond, audio, full = predictions
        return uncond + self.audio * (audio - uncond) + self.emotion * (full - audio)


@dataclass(frozen=True)
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
        compose_compounds: how a compound (``"happily surprised"``) is sampled. ``None`` (the
            paper): as one condition, its label through its two experts at its shares. A
            weight ``w``: composed guidance (:class:`Guidance` ``parts``), each of its two
            emotions guided as its own basic label through its own expert, the main emotion
            (``surprised``) at weight 1 and the adverb's (``happy``) at ``w``; one more
            network branch per step.
        compound_regions: composed compounds guide each face region by the parts that draw
            it (:meth:`~moee.emotions.EmotionCondition.region_weights`: ``sadly surprised``
            takes sad's brows and surprised's open mouth), each at ``compose_compounds`` times
            its weight there, instead of the whole face by both. The value is the row of the
            face crop, as a fraction of its height from the top, between the upper and the
            lower face, in (0, 1): SynthEmo's crops put it near 0.55 (0.5 and 0.6 read fewer
            compounds); a crop framed otherwise needs its own. Needs ``compose_compounds``. A
            compound without an AU prototype of its own is composed over the whole face.
        compound_audio_guidance: the audio guidance scale of composed compounds (``None``:
            ``audio_guidance``). Their two emotion terms outweigh the audio's, and the mouth
            follows the speech less; a larger scale restores it.
        intensity_guidance: an emotion's intensity (``happy@0.5``) also weighs its guidance
            term, ``ε_u + audio (ε_a − ε_u) + emotion · i · (ε_full − ε_a)`` (a composed
            compound's parts likewise), besides scaling its label. A model trained on strong
            expressions only (SynthEmo's 0.55–1) otherwise draws the same face at every
            intensity. A batch with a video below full intensity then runs the audio-only
            branch too: three network branches per step where equal scales need two.
        emotion_onset: seconds over which the asked emotion sets in at the start of a video:
            its guidance term is weighed per frame by a smoothstep from 0 on the first frame
            to 1 at ``emotion_onset`` (:meth:`onset_weights`), so the video starts from the
            portrait's own expression and the emotion develops as it does in recorded clips
            (SynthEmo's, like MEAD's, start near neutral). 0: the full emotion from the first
            frame. The clips within the onset run the audio-only branch too.
        speech_routing: how a ``speech`` condition reaches the Emotion MoE. ``"gates"`` (the
            paper): its emotion latents through the learned local and global gates.
            ``"heard"``: each clip's latents through the one expert of the basic emotion the
            speech-emotion encoder's classifier hears most in the clip's speech, as a basic
            label reaches its expert; it needs a classifier that hears all six basic emotions
            (the tiny preset's recogniser: SUPERB's IEMOCAP head hears four). On the tiny
            quickstart the gates lose part of what the recogniser hears: held-out speech videos
            read 16, 18 and 14 of 24 against 14, 14 and 12 at seeds 0-2, as many as the
            recogniser hears right.
    """

    sampler: SamplerName = "dpmpp"
    steps: int = 25
    audio_guidance: float = 3.5
    emotion_guidance: float = 2.5
    clip_frames: int = 16
    transition: float = 1.0
    strength: float = 1.0
    seed: int = 0
    compose_compounds: float | None = None
    compound_regions: float | None = None
    compound_audio_guidance: float | None = None
    intensity_guidance: bool = False
    emotion_onset: float = 0.0
    speech_routing: SpeechRouting = "gates"

    @property
    def guidance(self) -> Guidance:
        """The guidance scales as a :class:`Guidance`."""
        return Guidance(self.audio_guidance, self.emotion_guidance)

    @property
    def compound_guidance(self) -> Guidance:
        """The guidance of a compound's clips: composed of its two emotions' branches when
        ``compose_compounds`` is set, else :attr:`guidance`."""
        if self.compose_compounds is None:
            return self.guidance
        audio = self.audio_guidance if self.compound_audio_guidance is None \
            else self.compound_audio_guidance
        return Guidance(audio, self.emotion_guidance, (1.0, self.compose_compounds))

    def part_weights(self, compound: EmotionCondition) -> tuple[tuple[float, float], ...]:
        """``(upper face, lower face)`` weight of each part of a composed ``compound``, main
        emotion first: the :attr:`compound_guidance` parts' λ over the whole face, or, with
        :attr:`compound_regions`, ``compose_compounds`` times the compound's region weights."""
        w = self.compose_compounds
        i = compound.intensity if self.intensity_guidance else 1.0
        regions = None if self.compound_regions is None else compound.region_weights()
        if regions is None:
            return tuple((i * weight, i * weight) for weight in self.compound_guidance.parts)
        upper, lower = regions
        return tuple((i * w * u, i * w * v) for u, v in zip(upper, lower))

    def onset_weights(self, first_frame: int, frames: int) -> torch.Tensor | None:
        """The emotion term's weight (frames,) on each frame of the clip that starts at video
        frame ``first_frame`` (see ``emotion_onset``); ``None`` where every weight is 1."""
        if self.emotion_onset <= 0:
            return None
        seconds = (torch.arange(frames, dtype=torch.float32) + first_frame) / VIDEO_FPS
        rise = (seconds / self.emotion_onset).clamp(0, 1)
        return None if bool((rise == 1).all()) else rise * rise * (3 - 2 * rise)


REGION_RAMP = 0.06
"""Width of the soft boundary between the upper and lower face, as a fraction of the height."""


def face_region_weights(weights: torch.Tensor, height: int, split: float | None) -> torch.Tensor:
    """Per-row weights ``(b 1 1 h 1)`` of a ``height``-row latent grid from each video's
    ``(upper face, lower face)`` weights ``(b 2)``: the upper weight above the row ``split``
    (a fraction of the height from the top), the lower one below, joined by a sigmoid ramp
    :data:`REGION_RAMP` wide. ``split`` ``None``: the mean of the two everywhere."""
    if split is None:
        return weights.mean(1).view(-1, 1, 1, 1, 1)
    rows = (torch.arange(height, dtype=weights.dtype, device=weights.device) + 0.5) / height
    upper = torch.sigmoid((split - rows) / REGION_RAMP)  # h
    per_row = weights[:, :1] * upper + weights[:, 1:] * (1 - upper)  # b h
    return per_row.view(-1, 1, 1, height, 1)


PRESET_SAMPLING: dict[str, SamplerSettings] = {
    # the quickstart's sampling, from pure noise; compounds composed by face region at 2
    # (validation people: 22/32, against 7/32 composed over the whole face with the adverb at
    # 1.5; split at 0.5 20/32, 0.6 21/32) and their audio at 9 (the same 22/32, their lip sync
    # r 0.47 against 0.38 at 5); 4 steps read as 8 do (test people: basic 40 vs 41/48, the
    # other kinds equal, r 0.48 vs 0.45) in half the time; the intensity weighs the emotion
    # term (AU magnitude 0.57 -> 1.13 from @0.25 to @1 against a flat 1.16-1.19; `moee test`
    # on the small budget's weights: FID 14.5 vs 18.2, Emotion-Acc 0.94 vs 0.88); the emotion
    # sets in over the first clip (0.32 s, as SynthEmo's expressions do), where it used to show
    # in full from the first frame: on the validation people (seed-1 weights), lip sync r
    # 0.41 -> 0.64 (0.2 s: 0.58; 0.48 s: 0.68, weighing the second clip too), surprised's and
    # fear's opening jaw no longer hiding the speech's from the start; speech reaches the expert
    # of the emotion its recogniser hears (test people: 16 vs 14/24 through the gates)
    "tiny": SamplerSettings(steps=4, audio_guidance=3.5, emotion_guidance=3.5, clip_frames=8,
                            compose_compounds=2.0, compound_regions=0.55,
                            compound_audio_guidance=9.0, intensity_guidance=True,
                            emotion_onset=0.32, speech_routing="heard"),
    "sd15": SamplerSettings(),
}
"""Sampling per network preset: the quickstart, the demo page's defaults and
``configs/tiny/predict.yaml`` / ``test.yaml`` (a test keeps those equal)."""
