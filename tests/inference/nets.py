"""The tiny network with live MoEE branches, shared by the inference tests."""

import torch

from moee.models.moee_net import MoEENet


def live_tiny_net() -> MoEENet:
    """The tiny network with its zero-initialised output layers randomised, so every branch
    (reference, audio, experts, temporal) changes the output."""
    torch.manual_seed(0)
    net = MoEENet()
    with torch.no_grad():
        for p in net.denoiser.blocks.parameters():
            if not p.any():
                p.normal_(std=0.05)
    return net
