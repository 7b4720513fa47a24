"""The conditioner: one object that turns MoEENet's three conditions into what the denoiser reads.

=========  ==========================================  ==================================  ======
condition  input (batch key)                           encoder                             drop
=========  ==========================================  ==================================  ======
reference  ``reference`` image, ``motion_frames``      first stage + CLIP + ReferenceNet   5 %
audio      ``audio`` waveform (b, (f + 4) * 640)       wav2vec2 windows + AudioProjection  5 %
emotion    ``emotion`` :class:`EmotionInputs`          Emotion-to-Latents (+ routing)      10 %
=========  ==========================================  ==================================  ======

Training and inference call it the same way: :meth:`Conditioner.encode` gives
:class:`Conditions`, which ``MoEENet.forward`` takes whole. A training stage calls
:meth:`Conditioner.from_batch`, which reads the batch's keys, draws the classifier-free-guidance
drops at the conditions' rates, and tracks gradients only through the encoders the stage trains
(sgm's ``GeneralConditioner`` does the same for its embedders); the pipeline calls
:meth:`Conditioner.encode` once per clip and repeats the result over its guidance branches.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from moee.models.attention import DenoiserContext
from moee.models.emotion_latents import EmotionInputs
from moee.models.reference import ReferenceFeatures

if TYPE_CHECKING:
    from moee.models.moee_net import MoEENet

CONDITIONS = ("reference", "audio", "emotion")
"""MoEENet's conditions, in the order of every table and mask here."""

TRAINED_BY = {"reference": ("reference",), "audio": ("audio",),
              "emotion": ("emotion_latents", "emotion_modalities")}
"""The parameter groups (``moee.models.moee_net.PARAMETER_GROUPS``) of each condition's encoder."""


@dataclass
class ConditionDropout:
    """Per-sample probabilities of dropping each condition in training (classifier-free
    guidance)."""

    reference: float = 0.05
    audio: float = 0.05
    emotion: float = 0.1

    def masks(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        """{condition: (b,) bool} drawn at each condition's rate."""
        return {name: torch.rand(batch_size, device=device) < getattr(self, name)
                for name in CONDITIONS}


@dataclass
class Conditions:
    """The encoded conditions of one batch: what the denoiser attends to.

    Attributes:
        reference: the ReferenceNet's features of the portrait (and motion frames).
        audio: audio tokens (b f t c), or ``None``: the audio attention is skipped.
        emotion: emotion latents (b m c), or ``None``: the Emotion MoE is skipped.
        expert, weights: the emotion's routing (see ``EmotionMoE.forward``): one expert (an
            int or (b,)), per-sample expert shares (b e), or an explicit mixture ``weights``
            (b e) replacing the global gate; both ``None``: the learned gates.
        drop_reference, drop_audio, drop_emotion: (b,) bool, conditions dropped for
            classifier-free guidance (``None``: none): the reference tokens masked and its
            image embedding zeroed, the audio tokens zeroed, the Emotion MoE left out (so that
            emotion guidance amplifies exactly what the experts add to the backbone).
    """

    reference: ReferenceFeatures
    audio: torch.Tensor | None = None
    emotion: torch.Tensor | None = None
    expert: int | torch.Tensor | None = None
    weights: torch.Tensor | None = None
    drop_reference: torch.Tensor | None = None
    drop_audio: torch.Tensor | None = None
    drop_emotion: torch.Tensor | None = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditions:
        """The conditions with ``fn`` applied to every per-sample tensor (batch first); an
        int expert is everyone's and stays as it is."""
        def apply(value):
            return value if value is None or isinstance(value, int) else fn(value)
        return Conditions(self.reference.map(fn), **{
            f.name: apply(getattr(self, f.name)) for f in fields(self) if f.name != "reference"})

    def repeat(self, times: int) -> Conditions:
        """The same conditions for ``times`` copies of the batch (e.g. guidance branches)."""
        return self.map(lambda v: v.repeat(times, *(1,) * (v.dim() - 1)))

    def select(self, rows: slice) -> Conditions:
        """The conditions of some samples (e.g. one guidance branch)."""
        return self.map(lambda v: v[rows])

    def denoiser_inputs(self, num_frames: int, image_mode: bool = False
                        ) -> tuple[torch.Tensor, DenoiserContext]:
        """The denoiser's image embedding (b k D), with dropped references zeroed, and the
        :class:`DenoiserContext` of one call on ``num_frames`` frames per sample."""
        image_embeds, audio = self.reference.image_embeds, self.audio
        if self.drop_reference is not None:
            image_embeds = image_embeds * _keep(self.drop_reference)[:, None, None]
        if audio is not None and self.drop_audio is not None:
            audio = audio * _keep(self.drop_audio)[:, None, None, None]
        return image_embeds, DenoiserContext(
            num_frames=num_frames,
            reference=self.reference.features,
            reference_keep=_keep(self.drop_reference),
            reference_latent=self.reference.latent,
            audio=audio,
            emotion=self.emotion,
            emotion_keep=_keep(self.drop_emotion),
            expert=self.expert,
            weights=self.weights,
            image_mode=image_mode,
        )


def picked(per_frame: torch.Tensor, pick: torch.Tensor | None) -> torch.Tensor:
    """(b f ...) -> the frames of ``pick`` (b,) as (b 1 ...); all of them when ``None``."""
    if pick is None:
        return per_frame
    return per_frame[torch.arange(per_frame.shape[0], device=per_frame.device), pick][:, None]


def _keep(drop: torch.Tensor | None) -> torch.Tensor | None:
    return None if drop is None else ~drop.bool()


class Conditioner:
    """Owns MoEENet's conditions: each one's batch input, encoder, trainable flag and drop rate
    (see the module table).

    Not an ``nn.Module``: the encoders stay where their weights are named (``reference_net``,
    ``audio_projection``, ``emotion_to_latents``...), so checkpoints keep their layout.

    Args:
        net: the network whose encoders this calls.
        dropout: the training drop rate of each condition.
        trained_groups: the parameter groups the caller trains: a condition whose encoder is
            among them is encoded with gradients, the others without (inference: none).
    """

    def __init__(self, net: MoEENet, dropout: ConditionDropout | None = None,
                 trained_groups: Collection[str] = ()) -> None:
        self.net = net
        self.dropout = dropout or ConditionDropout()
        self.trainable = {name: any(g in trained_groups for g in groups)
                          for name, groups in TRAINED_BY.items()}

    def encode(
        self,
        reference_image: torch.Tensor,
        motion_latents: torch.Tensor | None = None,
        reference_latent: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        emotion: EmotionInputs | None = None,
        expert: int | torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        drop: dict[str, torch.Tensor] | None = None,
    ) -> Conditions:
        """Encode each given condition (gradients only through trained encoders).

        Args:
            reference_image: (b 3 H W) in [-1, 1].
            motion_latents: (b r c h w) latents of the previous clip's last frames, or ``None``.
            reference_latent: (b c h w) the image's latent (encoded when ``None``).
            audio: waveform (b, (f + 4) * 640) cut from a normalised track, or ``None``.
            emotion: the emotion conditions, or ``None`` (no Emotion MoE).
            expert, weights: the emotion's routing (see :class:`Conditions`).
            drop: {condition: (b,) bool} dropped for classifier-free guidance.
        """
        net, drop = self.net, drop or {}
        with self._grad("reference"):
            reference = net.encode_reference(reference_image, motion_latents,
                                             reference_latent=reference_latent)
        with self._grad("audio"):
            tokens = None if audio is None else net.encode_audio(audio)
        latents = None if emotion is None else self.encode_emotion(emotion)
        return Conditions(reference, tokens, latents, expert, weights,
                          *(drop.get(name) for name in CONDITIONS))

    def encode_emotion(self, emotion: EmotionInputs) -> torch.Tensor:
        """The emotion latents (b m c) alone (gradients when their encoder trains): the
        pipeline keeps them per emotion part across clips."""
        with self._grad("emotion"):
            return self.net.encode_emotion(emotion)

    def from_batch(
        self,
        batch: dict[str, Any],
        *,
        pick: torch.Tensor | None = None,
        audio: bool = True,
        emotion: bool = True,
        expert: int | torch.Tensor | None = None,
        dropped: dict[str, torch.Tensor] | None = None,
        dropout: bool = True,
    ) -> Conditions:
        """A training batch's conditions (keys in :mod:`moee.data.batch`).

        Args:
            pick: (b,) the one frame each sample is denoised at (stills: no motion frames, and
                the audio tokens of that frame only), or ``None``: the whole window.
            audio, emotion: whether the stage gives the denoiser these conditions.
            expert: the emotion's routing (see :class:`Conditions`).
            dropped: {condition: (b,) bool} the stage drops itself (e.g. clips whose emotion
                goes through no expert); they stay dropped.
            dropout: also draw the classifier-free-guidance drops (``False``: validation).
        """
        b = batch["reference"].shape[0]
        drop = dict(dropped or {})
        if dropout:
            for name, mask in self.dropout.masks(b, batch["reference"].device).items():
                drop[name] = mask | drop[name] if name in drop else mask
        motion = None if pick is not None else self.net.encode_frames(batch["motion_frames"])
        conditions = self.encode(batch["reference"], motion,
                                 audio=batch["audio"] if audio else None,
                                 emotion=batch["emotion"] if emotion else None,
                                 expert=expert, drop=drop)
        if pick is not None and conditions.audio is not None:
            conditions.audio = picked(conditions.audio, pick)
        return conditions

    def _grad(self, condition: str) -> torch.autograd.grad_mode.set_grad_enabled:
        return torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable[condition])
