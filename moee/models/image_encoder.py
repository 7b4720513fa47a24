"""Reference image embedding for the U-Nets' cross-attention (a CLIP vision tower)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModelWithProjection

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageEncoder(nn.Module):
    """``CLIPVisionModelWithProjection`` on images in [-1, 1]: (b 3 H W) -> embeds (b 1 D).

    Resizes to the model's input size and applies CLIP's normalisation itself.
    """

    def __init__(self, model: CLIPVisionModelWithProjection) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (b 3 H W) in [-1, 1] -> (b 1 D)."""
        size = self.model.config.image_size
        # antialiased bicubic resizing has no bfloat16 kernel on CPUs: resize in float32
        pixels = F.interpolate(images.float(), (size, size), mode="bicubic", antialias=True)
        pixels = ((pixels + 1) / 2 - self.mean) / self.std
        return self.model(pixel_values=pixels.to(self.model.dtype)).image_embeds[:, None]
