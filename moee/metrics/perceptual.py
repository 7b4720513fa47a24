"""LPIPS between generated and target frames, with every weight from local files."""

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import lpips
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moee.metrics._utils import Frozen, RunningMean, exists, require_file

TORCHVISION_BACKBONES = {
    "alex": "alexnet-owt-7be5be79.pth (https://download.pytorch.org/models/alexnet-owt-7be5be79.pth)",
    "vgg": "vgg16-397923af.pth (https://download.pytorch.org/models/vgg16-397923af.pth)",
}


class LPIPSNetwork(nn.Module):
    """The LPIPS distance (Zhang et al. 2018, v0.1) built without any download.

    ``lpips.LPIPS(pretrained=True, pnet_rand=True)`` gives the calibrated linear layers (they
    ship inside the ``lpips`` package, or come from ``linear_weights``) on a randomly
    initialised trunk; the trunk is then loaded from the local torchvision ImageNet
    checkpoint, which is exactly what ``lpips`` would have downloaded.

    Args:
        backbone_weights: torchvision checkpoint of the trunk (``alexnet-owt-7be5be79.pth`` or
            ``vgg16-397923af.pth``); only its ``features.*`` entries are read.
        net: ``"alex"`` (the usual LPIPS) or ``"vgg"``.
        linear_weights: LPIPS linear layers; default: the file in the ``lpips`` package.
    """

    def __init__(
        self,
        backbone_weights: str | Path,
        net: Literal["alex", "vgg"] = "alex",
        linear_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        path = require_file(
            backbone_weights,
            f"LPIPS {net} backbone weights",
            f"download {TORCHVISION_BACKBONES[net]} and pass metrics.lpips.backbone_weights=PATH",
        )
        if exists(linear_weights):
            linear_weights = str(
                require_file(
                    linear_weights,
                    "LPIPS linear-layer weights",
                    f"use lpips/weights/v0.1/{net}.pth from the lpips package, or leave it unset",
                )
            )
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=`
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            self.net = lpips.LPIPS(
                pretrained=True, net=net, pnet_rand=True, model_path=linear_weights, verbose=False
            )
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        trunk = self.net.net
        # lpips' trunk holds torchvision's features[i] as slice<k>.<i>:
        # "slice2.3.weight" is "features.3.weight"
        names = {key: "features." + key.split(".", 1)[1] for key in trunk.state_dict()}
        missing = sorted(source for source in names.values() if source not in checkpoint)
        if missing:
            raise ValueError(f"{path} is not a torchvision {net} checkpoint: no {missing[0]}")
        trunk.load_state_dict({key: checkpoint[source] for key, source in names.items()})

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Images ``(n, 3, H, W)`` in [-1, 1] → distances ``(n,)``."""
        return self.net(x, y).flatten()


class FeatureDistance(nn.Module):
    """LPIPS-style distance on any multi-layer feature network (e.g. a SynthEmo probe).

    The uncalibrated LPIPS baseline: per layer, unit-normalise the channel vector at each
    position, take the squared difference summed over channels and averaged over space; sum
    over layers.

    Args:
        features: maps images ``(n, 3, H, W)`` in [-1, 1] to a sequence of maps ``(n, c, h, w)``.
    """

    def __init__(self, features: Callable[[Tensor], Sequence[Tensor]]) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Images ``(n, 3, H, W)`` in [-1, 1] → distances ``(n,)``."""
        layers = zip(self.features(x), self.features(y), strict=True)
        return sum(
            (F.normalize(fx, dim=1) - F.normalize(fy, dim=1)).square().sum(1).mean((-2, -1))
            for fx, fy in layers
        )


class LearnedPerceptualSimilarity(RunningMean):
    """LPIPS: mean perceptual distance over all frame pairs (lower is better).

    ``update(generated, target)``: clips ``(b, f, 3, H, W)`` (or images ``(b, 3, H, W)``) in
    [0, 1]; frame i of a generated clip is compared with frame i of its target.

    Args:
        distance: maps two image batches ``(n, 3, H, W)`` in [-1, 1] to ``(n,)`` (or any shape
            with n elements, as ``lpips.LPIPS`` returns): :class:`LPIPSNetwork`,
            :class:`FeatureDistance`, or an ``lpips.LPIPS``.
    """

    higher_is_better = False
    input_keys = ("generated", "target")

    def __init__(self, distance: Callable[[Tensor, Tensor], Tensor], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.distance = Frozen(distance)

    @classmethod
    def from_weights(
        cls,
        backbone_weights: str | Path,
        net: Literal["alex", "vgg"] = "alex",
        linear_weights: str | Path | None = None,
        **kwargs: object,
    ) -> "LearnedPerceptualSimilarity":
        """LPIPS with the standard weights from local files (see :class:`LPIPSNetwork`)."""
        return cls(LPIPSNetwork(backbone_weights, net, linear_weights), **kwargs)

    def update(self, generated: Tensor, target: Tensor) -> None:
        """Add the distances of all frame pairs."""
        x, y = (frames.flatten(0, -4) * 2 - 1 for frames in (generated, target))
        self.accumulate(self.distance(x, y))
