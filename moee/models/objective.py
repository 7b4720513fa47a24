"""The diffusion objective shared by every training stage: noising, targets, x0 and w(t)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from diffusers import DDPMScheduler

Prediction = Literal["epsilon", "v_prediction", "sample"]


class DiffusionObjective:
    """Forward process and regression target of a diffusers DDPM schedule.

    Args:
        prediction_type: ``"epsilon"`` (SD-1.5), ``"v_prediction"``, or ``"sample"`` (the
            clean latent itself: a small model that has not learnt to find fine noise then
            leaves its output smooth rather than noisy; the tiny preset's choice).
        zero_terminal_snr: rescale betas so the last timestep is pure noise (Lin et al. 2024);
            use it with ``v_prediction``.
        noise_offset: std of a per-sample, per-channel constant added to the noise, which lets
            the model change overall brightness (0 disables).
        timestep_power: training timesteps are drawn with density ∝ t^(p-1): 1 is uniform;
            2 rises linearly towards pure noise, where a sample's expression is decided and
            where few-step sampling spends its steps (4 trailing steps never ask below t=T/4);
            below 1 the density crowds the clean end, where fine detail is drawn. A list of
            powers draws from their mixture, weighted by ``timestep_shares``.
        timestep_shares: the mixture's weights, one per power (they need not sum to 1);
            ``None`` for a single power.
        num_train_timesteps, beta_schedule, beta_start, beta_end: the SD-1.5 schedule by default.
    """

    def __init__(
        self,
        prediction_type: Prediction = "epsilon",
        zero_terminal_snr: bool = False,
        noise_offset: float = 0.0,
        timestep_power: float | list[float] = 1.0,
        timestep_shares: list[float] | None = None,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
    ) -> None:
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
            beta_start=beta_start, beta_end=beta_end, prediction_type=prediction_type,
            rescale_betas_zero_snr=zero_terminal_snr, timestep_spacing="trailing",
            clip_sample=False,
        )
        self.prediction_type = prediction_type
        powers = [timestep_power] if isinstance(timestep_power, (int, float)) else timestep_power
        shares = [1.0] * len(powers) if timestep_shares is None else timestep_shares
        if not powers or min(powers) <= 0:
            raise ValueError(f"timestep_power must be positive (1: uniform), got {timestep_power}")
        if len(shares) != len(powers) or min(shares) < 0 or sum(shares) <= 0:
            raise ValueError(f"timestep_shares must give one non-negative weight per "
                             f"timestep_power ({len(powers)}), got {timestep_shares}")
        self.noise_offset = noise_offset
        self.timestep_powers = torch.tensor(powers, dtype=torch.float64)
        self.timestep_shares = torch.tensor(shares, dtype=torch.float64) / sum(shares)
        self.num_train_timesteps = num_train_timesteps

    @property
    def schedule(self) -> dict:
        """What sampling must share with training (the constructor's arguments but the
        training-only noise offset), read back from the scheduler; stage exports record it,
        pipelines rebuild from it."""
        config = self.scheduler.config
        return {"prediction_type": config.prediction_type,
                "zero_terminal_snr": config.rescale_betas_zero_snr,
                "num_train_timesteps": config.num_train_timesteps,
                "beta_schedule": config.beta_schedule, "beta_start": config.beta_start,
                "beta_end": config.beta_end}

    def sample_timesteps(self, batch_size: int, device: torch.device,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps (b,) in [0, T): uniform, or with density ∝ t^(p-1) for
        ``timestep_power`` p (``T u^(1/p)`` for uniform u), each sample's p drawn from the
        mixture when there are several."""
        if self.timestep_powers.tolist() == [1.0]:
            return torch.randint(0, self.num_train_timesteps, (batch_size,), device=device,
                                 generator=generator)
        u = torch.rand(batch_size, device=device, generator=generator)
        if len(self.timestep_powers) == 1:
            power = self.timestep_powers.item()
        else:
            pick = torch.multinomial(self.timestep_shares.to(device), batch_size,
                                     replacement=True, generator=generator)
            power = self.timestep_powers.to(device, torch.float32)[pick]
        t = self.num_train_timesteps * u ** (1 / power)
        return t.long().clamp_max(self.num_train_timesteps - 1)

    def sample_noise(self, latents: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Gaussian noise like ``latents`` (b f c h w), plus the optional noise offset."""
        noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype,
                            generator=generator)
        if self.noise_offset:
            b, _, c = latents.shape[:3]
            offset = torch.randn((b, 1, c, 1, 1), device=latents.device, dtype=latents.dtype,
                                 generator=generator)
            noise = noise + self.noise_offset * offset
        return noise

    def _alphas(self, timesteps: torch.Tensor, like: torch.Tensor):
        alpha_bar = self.scheduler.alphas_cumprod.to(like.device)[timesteps].to(like.dtype)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return alpha_bar.sqrt().view(shape), (1 - alpha_bar).sqrt().view(shape)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """z_t = sqrt(ᾱ_t) z_0 + sqrt(1 − ᾱ_t) ε, for (b, ...) latents and (b,) timesteps
        (the scheduler's own ``add_noise``)."""
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
        """What the network regresses: ε, z_0, or v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) z_0 (the
        scheduler's ``get_velocity``)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return latents
        return self.scheduler.get_velocity(latents, noise, timesteps)

    def predict_x0(self, noisy: torch.Tensor, prediction: torch.Tensor,
                   timesteps: torch.Tensor) -> torch.Tensor:
        """The clean latent implied by a prediction at timestep t."""
        if self.prediction_type == "sample":
            return prediction
        a, s = self._alphas(timesteps, noisy)
        if self.prediction_type == "epsilon":
            return (noisy - s * prediction) / a.clamp_min(1e-4)
        return a * noisy - s * prediction

    def pixel_weight(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The paper's w(t) = cos(tπ / 2T): full pixel loss at t = 0, none at t = T."""
        return torch.cos(timesteps.float() * math.pi / (2 * self.num_train_timesteps))
