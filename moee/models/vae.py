"""First stages: video frames <-> scaled latents.

* :class:`VideoVAE` wraps diffusers' ``AutoencoderKL`` (SD-1.5's VAE in the real config),
  sliced over frames.
* :class:`PatchCodec` is the tiny preset's lossless first stage: space-to-depth
  (``pixel_unshuffle``) of ``p x p`` pixel patches into channels, with its exact inverse. It has
  nothing to train and loses nothing, so a CPU-sized model is never capped by a blurry
  autoencoder (64x64x3 frames become 16x16x48 latents with ``p = 4``).

Both take frames (b f 3 H W) in [-1, 1] and give latents (b f c h w), and share the attributes
the rest of MoEE reads: ``downsample``, ``sample_size``, ``latent_channels``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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

    @property
    def sample_size(self) -> int:
        """The image side the autoencoder was built for."""
        return self.vae.config.sample_size

    @property
    def latent_channels(self) -> int:
        """Channels ``c`` of a latent."""
        return self.vae.config.latent_channels

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


class PatchCodec(nn.Module):
    """Lossless space-to-depth first stage: ``p x p`` pixel patches become ``3 p²`` channels.

    ``decode(encode(x)) == x`` exactly; there are no weights. The latents are the pixels
    themselves, rescaled by ``scaling_factor`` (1 keeps [-1, 1], the range pixel-space diffusion
    models are trained in).

    Args:
        patch_size: ``p``, pixels per latent along each side.
        sample_size: the image side the network is built for.
        scaling_factor: latent = pixels x this.
    """

    def __init__(self, patch_size: int = 4, sample_size: int = 64,
                 scaling_factor: float = 1.0) -> None:
        super().__init__()
        self.downsample = patch_size
        self.sample_size = sample_size
        self.scaling_factor = scaling_factor
        self.latent_channels = 3 * patch_size**2

    def encode(
        self, frames: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """frames (b f 3 H W) in [-1, 1] -> latents (b f 3p² H/p W/p); ``sample`` and
        ``generator`` are accepted for the VideoVAE interface (the codec is deterministic)."""
        b = frames.shape[0]
        flat = rearrange(frames, "b f c h w -> (b f) c h w")
        latents = F.pixel_unshuffle(flat, self.downsample) * self.scaling_factor
        return rearrange(latents, "(b f) c h w -> b f c h w", b=b)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (b f 3p² h w) -> frames (b f 3 hp wp)."""
        b = latents.shape[0]
        flat = rearrange(latents, "b f c h w -> (b f) c h w") / self.scaling_factor
        return rearrange(F.pixel_shuffle(flat, self.downsample), "(b f) c h w -> b f c h w", b=b)
