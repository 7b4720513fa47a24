"""Video frames <-> scaled latents with diffusers' ``AutoencoderKL``, sliced over frames."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from einops import rearrange
from torch import nn


class VideoVAE(nn.Module):
    """Encode (b f 3 H W) frames in [-1, 1] to scaled latents (b f c h w) and decode them back.

    Args:
        vae: the autoencoder (SD-1.5's in the real config).
        slice_size: frames encoded or decoded per call (bounds memory on long clips).
    """

    def __init__(self, vae: AutoencoderKL, slice_size: int = 16) -> None:
        super().__init__()
        self.vae = vae
        self.slice_size = slice_size

    @property
    def scaling_factor(self) -> float:
        """Latent scale of the autoencoder's config."""
        return self.vae.config.scaling_factor

    @property
    def shift_factor(self) -> float:
        """Latent shift of the autoencoder's config (0 for SD-1.5)."""
        return self.vae.config.shift_factor or 0.0

    @property
    def downsample(self) -> int:
        """Pixels per latent along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(
        self, frames: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """frames (b f 3 H W) in [-1, 1] -> latents (b f c h w), scaled for diffusion.

        ``sample=False`` takes the posterior mode (deterministic).
        """
        b = frames.shape[0]
        flat = rearrange(frames, "b f c h w -> (b f) c h w").to(self.vae.dtype)
        parts = []
        for chunk in flat.split(self.slice_size):
            posterior = self.vae.encode(chunk).latent_dist
            parts.append(posterior.sample(generator) if sample else posterior.mode())
        latents = (torch.cat(parts) - self.shift_factor) * self.scaling_factor
        return rearrange(latents, "(b f) c h w -> b f c h w", b=b)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (b f c h w) -> frames (b f 3 H W), roughly in [-1, 1]."""
        b = latents.shape[0]
        flat = rearrange(latents, "b f c h w -> (b f) c h w").to(self.vae.dtype)
        flat = flat / self.scaling_factor + self.shift_factor
        frames = torch.cat([self.vae.decode(chunk).sample for chunk in flat.split(self.slice_size)])
        return rearrange(frames, "(b f) c h w -> b f c h w", b=b)
