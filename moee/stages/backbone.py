"""Stage 1: fine-tune the ReferenceNet and the denoising U-Net on all data."""

from __future__ import annotations

from typing import Any, Literal

import torch

from moee.emotions import NUM_EXPERTS
from moee.stages.base import DiffusionStage


class BackboneModule(DiffusionStage):
    """Stage 1 of MoEE.

    ``mode="image"`` trains the spatial layers and the ReferenceNet on single frames (temporal
    and audio layers skipped); ``mode="video"`` adds the audio and temporal layers and trains on
    windows of frames with their audio. By default emotion experts are not used in this stage
    (the paper's stage 1).

    ``warm_experts=True`` also trains the six experts here, each sample through the expert of
    its clip's basic emotion (hard routing, as :class:`~moee.stages.expert.ExpertModule` with
    several experts; neutral and compound clips skip the Emotion MoE). The U-Net then learns
    features that an expert can steer, instead of a blur averaged over the expressions the
    reference does not show; stage 2 still fine-tunes each expert with the U-Net frozen. This
    is the CPU recipe's choice (``configs/tiny/backbone.yaml``): at a few hundred steps, experts
    trained on a U-Net that never saw them only learnt colour.

    ``image_audio=True`` (image mode) also trains the audio attention, each still hearing its
    own frame's audio tokens. The mouth of a still is then predictable, where a stage that
    cannot hear it learns the average of every mouth opening (a pale smear over the very
    region where happy, sad and disgusted show), and lip motion is learnt at the image mode's
    many clips per second. The CPU recipe's choice (``configs/tiny/backbone_image.yaml``).

    ``freeze_spatial=True`` (video mode) keeps the spatial layers and the ReferenceNet as the
    image-mode stage left them and trains only the audio and temporal layers (and the warmed
    experts), as AnimateDiff trains its motion modules on a frozen image model. The CPU recipe's
    choice: its video stage at batch 4 and lr 1e-3 otherwise undid the faces the image stage
    had learnt (``benchmarks/bench_stills.py``: sharp faces became streaked ones).

    Its export also carries the (untrained) Emotion-to-Latents: the six experts, trained side by
    side from this export, then all condition on one and the same emotion latent space.
    """

    def __init__(self, *args, mode: Literal["image", "video"] = "video",
                 warm_experts: bool = False, freeze_spatial: bool = False,
                 image_audio: bool = False, **kwargs) -> None:
        if freeze_spatial and mode != "video":
            raise ValueError("freeze_spatial needs mode='video': the image mode trains only "
                             "spatial layers")
        if image_audio and mode != "image":
            raise ValueError("image_audio needs mode='image': the video mode always hears audio")
        self.mode = mode
        self.image_audio = image_audio
        self.warm_experts = warm_experts
        self.freeze_spatial = freeze_spatial
        super().__init__(*args, **kwargs)

    @property
    def trainable_groups(self) -> tuple[str, ...]:
        groups = () if self.freeze_spatial else ("backbone", "reference")
        if self.hears_audio:
            groups += ("audio",)
        if self.mode == "video":
            groups += ("temporal",)
        if self.warm_experts:
            groups += tuple(f"expert_{i}" for i in range(NUM_EXPERTS))
        return groups

    @property
    def carried_groups(self) -> tuple[str, ...]:
        """The untrained label path of Emotion-to-Latents (the experts that follow must all
        condition on the same one), and the frozen spatial layers: the export holds the whole
        backbone, whichever part of it this stage trained. The other modalities' paths and
        their random stand-in encoders are left to the gating stage, which trains them."""
        frozen = ("backbone", "reference") if self.freeze_spatial else ()
        return ("emotion_latents", *frozen)

    @property
    def hears_audio(self) -> bool:
        return self.mode == "video" or self.image_audio

    def frame_pick(self, batch: dict[str, Any]) -> torch.Tensor | None:
        if self.mode == "video":
            return None
        frames = batch["frames"]
        return torch.randint(frames.shape[1], (frames.shape[0],), device=frames.device)

    def condition_options(self, batch: dict[str, Any]) -> dict[str, Any]:
        if not self.warm_experts:
            return {"emotion": False}
        index = batch["emotion_index"]  # neutral clips go through no expert
        return {"expert": index.clamp(min=0), "dropped": {"emotion": index < 0}}
