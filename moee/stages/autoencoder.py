"""Stage 0 (tiny presets only): fit the latent autoencoder that SD-1.5 ships pretrained.

A latent diffusion model can only show what its VAE can decode, and a random tiny VAE decodes
nothing recognisable. This stage trains the preset's diffusers ``AutoencoderKL`` to reconstruct
data frames, sets its ``scaling_factor`` so latents have unit variance (SD-1.5's 0.18215 plays
the same role), and saves it with ``save_pretrained``: the tiny configs then load it through the
same ``from_pretrained`` path that loads SD-1.5's VAE on a cluster.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from einops import rearrange
from lightning.pytorch.utilities import rank_zero_only

from moee.models.pretrained import PRESETS, Preset


class AutoencoderModule(L.LightningModule):
    """Train a preset's ``AutoencoderKL`` on the frames of the batches.

    Args:
        preset: which architecture's VAE (``tiny`` on CPU).
        lr: AdamW learning rate.
        kl_weight: weight of the posterior's KL term (small: a near-deterministic autoencoder).
        frames_per_sample: frames of each window used per step.
        export_path: folder written by ``save_pretrained`` at the end of training.
    """

    def __init__(self, preset: Preset = "tiny", lr: float = 1e-3, kl_weight: float = 1e-6,
                 frames_per_sample: int = 4, export_path: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vae = AutoencoderKL(**PRESETS[preset].vae)
        self.register_buffer("latent_variance", torch.ones(()))

    def _step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        frames = batch["frames"][:, : self.hparams.frames_per_sample]
        images = rearrange(frames, "b f c h w -> (b f) c h w")
        posterior = self.vae.encode(images).latent_dist
        latents = posterior.sample()
        reconstruction = self.vae.decode(latents).sample
        terms = {
            "l1": F.l1_loss(reconstruction, images),
            "kl": posterior.kl().mean() / latents[0].numel(),
        }
        terms["total"] = terms["l1"] + self.hparams.kl_weight * terms["kl"]
        terms["psnr"] = -10 * torch.log10(F.mse_loss(reconstruction, images).detach() / 4)
        with torch.no_grad():
            self.latent_variance.lerp_(posterior.mode().var(), 0.05)
        return terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        terms = self._step(batch)
        self.log_dict({f"train/{k}": v for k, v in terms.items()},
                      batch_size=batch["frames"].shape[0])
        self.log("psnr", terms["psnr"], prog_bar=True, logger=False)
        return terms["total"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        terms = self._step(batch)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True,
                      batch_size=batch["frames"].shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.vae.parameters(), lr=self.hparams.lr)

    @rank_zero_only
    def export(self, folder: str | Path) -> Path:
        """Save the VAE in diffusers format with a unit-variance ``scaling_factor``."""
        folder = Path(folder)
        partial = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        self.vae.register_to_config(scaling_factor=float(self.latent_variance.rsqrt()))
        self.vae.save_pretrained(partial)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        return folder

    def on_train_end(self) -> None:
        if self.hparams.export_path:
            self.export(self.hparams.export_path)
