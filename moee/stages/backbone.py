"""Stage 1: fine-tune the ReferenceNet and the denoising U-Net on all data (no emotion)."""

from __future__ import annotations

from typing import Any, Literal

import torch

from moee.stages.base import DiffusionStage


class BackboneModule(DiffusionStage):
    """Stage 1 of MoEE.

    ``mode="image"`` trains the spatial layers and the ReferenceNet on single frames (temporal
    and audio layers skipped); ``mode="video"`` adds the audio and temporal layers and trains on
    windows of frames with their audio. Emotion experts are not used in this stage.

    Its export also carries the (untrained) Emotion-to-Latents: the six experts, trained side by
    side from this export, then all condition on one and the same emotion latent space.
    """

    carried_groups = ("emotion_latents",)

    def __init__(self, *args, mode: Literal["image", "video"] = "video", **kwargs) -> None:
        self.mode = mode
        super().__init__(*args, **kwargs)

    @property
    def trainable_groups(self) -> tuple[str, ...]:
        spatial = ("backbone", "reference")
        return spatial if self.mode == "image" else (*spatial, "audio", "temporal")

    def select_frames(self, batch: dict[str, Any]) -> torch.Tensor:
        frames = batch["frames"]
        if self.mode == "video":
            return frames
        pick = torch.randint(frames.shape[1], (frames.shape[0],), device=frames.device)
        return frames[torch.arange(frames.shape[0], device=frames.device), pick][:, None]

    def network_kwargs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"image_mode": self.mode == "image"}
