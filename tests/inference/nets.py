"""The tiny network with live MoEE branches, shared by the inference tests."""

import torch

from moee.models.moee_net import MoEENet
from tests.models.conftest import wake_zero_inits


def live_tiny_net() -> MoEENet:
    """The tiny network with its zero-initialised output layers randomised, so every branch
    (reference, audio, experts, temporal) changes the output."""
    torch.manual_seed(0)
    net = MoEENet()
    wake_zero_inits(net)
    return net
