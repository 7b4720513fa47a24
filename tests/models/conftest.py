"""Shared fixtures for the network tests: offline hubs, a tiny MoEENet with live branches."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from moee.models.emotion_latents import EmotionInputs  # noqa: E402
from moee.models.moee_net import MoEENet  # noqa: E402
from moee.models.pretrained import PRESETS  # noqa: E402

B, F, PIXELS = 2, 4, 64
LATENT = PIXELS // PRESETS["tiny"].patch_size
CHANNELS = PRESETS["tiny"].unet["in_channels"]
"""Latent side and channels of the tiny preset (its patch codec: 64 px, p x p patches)."""
DIM = PRESETS["tiny"].unet["cross_attention_dim"]
"""Width of the tiny preset's condition tokens."""


def wake_zero_inits(net: MoEENet) -> None:
    """Give the zero-initialised output projections random values, so every branch acts."""
    for name, p in net.named_parameters():
        zero_init = ("audio.attn.to_out", "to_out.", "temporal.module.proj_out")
        if name.startswith("denoiser.blocks.") and any(k in name for k in zero_init):
            with torch.no_grad():
                p.normal_(std=0.05)
    with torch.no_grad():  # the reference latent's inputs of the widened conv_in
        net.denoiser.unet.conv_in.weight[:, CHANNELS:].normal_(std=0.05)
        if net.denoiser.reference_skip:  # the output layer, zero under the reference skip
            net.denoiser.unet.conv_out.weight.normal_(std=0.05)


@pytest.fixture(scope="session")
def tiny_net() -> MoEENet:
    """A tiny MoEENet in eval mode whose new branches are all active (not identity)."""
    torch.manual_seed(0)
    net = MoEENet()
    wake_zero_inits(net)
    return net.eval()


@pytest.fixture
def clip_inputs():
    """One batch: reference image, noisy latents, timesteps, waveform, emotion conditions."""
    g = torch.Generator().manual_seed(1)
    return dict(
        image=torch.rand(B, 3, PIXELS, PIXELS, generator=g) * 2 - 1,
        latents=torch.randn(B, F, CHANNELS, LATENT, LATENT, generator=g),
        timesteps=torch.tensor([10, 500]),
        audio=torch.randn(B, (F + 4) * 640, generator=g),
        motion=torch.randn(B, 2, CHANNELS, LATENT, LATENT, generator=g),
        emotion=EmotionInputs(label=torch.eye(6)[[3, 4]], au=torch.rand(B, 17, generator=g)),
    )
