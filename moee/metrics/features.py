"""Feature extractors for FID and FVD: the standard networks from local files, and a seeded
random stand-in for tests and CPU configs.
"""

import warnings
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn
from torchmetrics.image.fid import NoTrainInceptionV3

from moee.metrics._utils import per_frame, require_file

INCEPTION_HINT = (
    "download pt_inception-2015-12-05-6726825d.pth (https://github.com/toshas/torch-fidelity/"
    "releases/download/v0.2.0/pt_inception-2015-12-05-6726825d.pth) "
    "and pass metrics.fid.weights=PATH"
)
I3D_HINT = (
    "download i3d_torchscript.pt (StyleGAN-V's I3D, "
    "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt) "
    "and pass metrics.fvd.weights=PATH"
)


class InceptionV3Features(nn.Module):
    """The standard FID network: Inception-v3 pool3 features (2048) of TF-FID's weights.

    Uses torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's port, needs the
    ``torch-fidelity`` package) with the weights file given here, never a download.
    Images ``(n, 3, H, W)`` in [0, 1] → ``(n, 2048)``; they are quantised to uint8 like
    torchmetrics' ``normalize=True`` and resized to 299 inside the network.

    Args:
        weights: path of ``pt_inception-2015-12-05-6726825d.pth``.
    """

    num_features = 2048

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        path = require_file(weights, "FID Inception weights", INCEPTION_HINT)
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(self.num_features)],
            feature_extractor_weights_path=str(path),
        )

    def forward(self, images: Tensor) -> Tensor:
        """``(n, 3, H, W)`` in [0, 1] → ``(n, 2048)``."""
        return self.net((images.clamp(0, 1) * 255).to(torch.uint8))


class I3DFeatures(nn.Module):
    """StyleGAN-V's FVD network: the TorchScript I3D, logits-layer features (400).

    Called as StyleGAN-V does (``rescale=False, resize=True, return_features=True``): the
    network resizes to 224 itself and expects values in [-1, 1].
    Clips ``(n, t, 3, H, W)`` in [0, 1] → ``(n, 400)``.

    Args:
        weights: path of ``i3d_torchscript.pt``.
    """

    num_features = 400

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        path = require_file(weights, "FVD I3D weights", I3D_HINT)
        with warnings.catch_warnings():  # the released network only exists as TorchScript
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
            self.net = torch.jit.load(str(path), map_location="cpu")

    def forward(self, clips: Tensor) -> Tensor:
        """``(n, t, 3, H, W)`` in [0, 1] → ``(n, 400)``."""
        videos = rearrange(clips * 2 - 1, "n t c h w -> n c t h w")
        return self.net(videos, rescale=False, resize=True, return_features=True)


class RandomConvFeatures(nn.Module):
    """A fixed, seeded random conv net: a weight-free stand-in for Inception in tests and CPU runs.

    Two stride-2 convolutions with ReLU, then global average pooling.
    Images ``(n, 3, H, W)`` → ``(n, num_features)``.

    Args:
        num_features: output width.
        seed: the weights depend only on it.
        hidden: width of the first convolution.
    """

    def __init__(self, num_features: int = 64, seed: int = 0, hidden: int = 32) -> None:
        super().__init__()
        self.num_features = num_features
        self.net = nn.Sequential(
            nn.Conv2d(3, hidden, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, num_features, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        generator = torch.Generator().manual_seed(seed)
        for conv in (self.net[0], self.net[2]):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu", generator=generator)
            nn.init.normal_(conv.bias, std=0.1, generator=generator)

    def forward(self, images: Tensor) -> Tensor:
        """``(n, 3, H, W)`` → ``(n, num_features)``."""
        return self.net(images)


class RandomConvVideoFeatures(RandomConvFeatures):
    """:class:`RandomConvFeatures` for clips, the weight-free stand-in for I3D.

    Clips ``(n, t, 3, H, W)`` → ``(n, 2·frame_features)``: the mean over time of the frame
    features (appearance) and the mean absolute change between consecutive frames (motion).

    Args:
        frame_features: width of the per-frame features.
        seed: the weights depend only on it.
        hidden: width of the first convolution.
    """

    def __init__(self, frame_features: int = 32, seed: int = 0, hidden: int = 32) -> None:
        super().__init__(frame_features, seed, hidden)
        self.num_features = 2 * frame_features

    def forward(self, clips: Tensor) -> Tensor:
        """``(n, t, 3, H, W)`` → ``(n, 2·frame_features)``."""
        frames = per_frame(self.net, clips)  # n t d
        motion = (frames[:, 1:] - frames[:, :-1]).abs().mean(1)
        return torch.cat([frames.mean(1), motion], dim=-1)
