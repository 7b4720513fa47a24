"""Fréchet distances between feature Gaussians: FID over frames and FVD over clips.

FID is torchmetrics' ``FrechetInceptionDistance`` with an injected feature network. FVD, which
torchmetrics lacks, keeps per set the float64 sum of features, the sum of their outer products
and the count (as torchmetrics' FID does). These are sums, so DDP reduces them by summing
(``dist_reduce_fx="sum"``) instead of gathering every feature vector, and two halves merge
exactly into the whole.
"""

import warnings
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance as TorchmetricsFID

from moee.metrics._utils import Frozen, exists
from moee.metrics.features import I3DFeatures, InceptionV3Features


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix ``(d, d)``."""
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * eigenvalues.clamp_min(0).sqrt()) @ eigenvectors.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Squared Fréchet (2-Wasserstein) distance between two Gaussians, in float64.

    ``‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^½``. The trace of the matrix square root is
    taken as the sum of square roots of the eigenvalues of ``Σ₁^½ Σ₂ Σ₁^½`` (similar to
    ``Σ₁ Σ₂`` but symmetric), which equals ``trace(scipy.linalg.sqrtm(Σ₁ @ Σ₂))`` and stays
    real for singular covariances (fewer samples than features).

    Args:
        mu1, mu2: means ``(d,)``.
        sigma1, sigma2: covariances ``(d, d)``.

    Returns:
        A float64 scalar.
    """
    mu1, sigma1, mu2, sigma2 = (t.double() for t in (mu1, sigma1, mu2, sigma2))
    root1 = _psd_sqrt(sigma1)
    cross = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((cross + cross.T) / 2).clamp_min(0).sqrt().sum()
    return (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt


class GaussianStatsMixin:
    """Running mean and covariance of named feature sets, as sum-reduced float64 states.

    Mix into a ``torchmetrics.Metric``: ``add_gaussian_state(name, d)`` in ``__init__``,
    ``update_gaussian(name, features)`` in ``update``, ``gaussian(name)`` in ``compute``.
    """

    def add_gaussian_state(self: Metric, name: str, num_features: int) -> None:
        """Register the sum, outer-product sum and count of feature set ``name``."""
        shapes = {"sum": (num_features,), "outer": (num_features, num_features), "count": ()}
        for part, shape in shapes.items():
            self.add_state(f"{name}_{part}", torch.zeros(shape, dtype=torch.float64), "sum")

    def update_gaussian(self, name: str, features: Tensor) -> None:
        """Add feature vectors ``(n, d)`` to set ``name``."""
        features = features.double()
        getattr(self, f"{name}_sum").add_(features.sum(0))
        getattr(self, f"{name}_outer").add_(features.T @ features)
        getattr(self, f"{name}_count").add_(features.shape[0])

    def gaussian(self, name: str) -> tuple[Tensor, Tensor]:
        """Mean ``(d,)`` and unbiased covariance ``(d, d)`` of set ``name``."""
        count = getattr(self, f"{name}_count")
        if count < 2:
            raise RuntimeError(
                f"{type(self).__name__} needs at least 2 {name} samples, got {int(count)}"
            )
        mean = getattr(self, f"{name}_sum") / count
        scatter = getattr(self, f"{name}_outer") - count * torch.outer(mean, mean)
        covariance = scatter / (count - 1)
        return mean, covariance


class FrechetFeatureDistance(GaussianStatsMixin, Metric):
    """Fréchet distance between the feature distributions of generated and target samples.

    Subclasses define ``features`` (samples → ``(n, d)``); both sets are passed through it.

    Args:
        feature_extractor: the network (any ``nn.Module`` or callable); run frozen.
        num_features: its output width; default ``feature_extractor.num_features``.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False
    input_keys = ("generated", "target")

    def __init__(
        self, feature_extractor: nn.Module, num_features: int | None = None, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        num_features = num_features or getattr(feature_extractor, "num_features", None)
        if not exists(num_features):
            raise ValueError(
                f"{type(self).__name__}: pass num_features (the extractor has no num_features)"
            )
        self.feature_extractor = Frozen(feature_extractor)
        for name in self.input_keys:
            self.add_gaussian_state(name, num_features)

    def features(self, samples: Tensor) -> Tensor:
        """Feature vectors ``(n, d)`` of a batch of samples."""
        raise NotImplementedError

    def update(self, generated: Tensor | None = None, target: Tensor | None = None) -> None:
        """Add generated and/or target samples (either may be omitted, e.g. for cached targets)."""
        for name, samples in zip(self.input_keys, (generated, target), strict=True):
            if exists(samples):
                self.update_gaussian(name, self.features(samples))

    def compute(self) -> Tensor:
        """The Fréchet distance (float64 scalar)."""
        return frechet_distance(*self.gaussian("generated"), *self.gaussian("target"))


class FrechetInceptionDistance(TorchmetricsFID):
    """FID over frames: torchmetrics' FID on an injected network; every frame of a clip is a sample.

    ``update(generated, target)`` takes clips ``(b, f, 3, H, W)`` or images ``(b, 3, H, W)``
    in [0, 1], either may be omitted; ``target`` is torchmetrics' real set, ``generated`` its
    fake one. The extractor maps images ``(n, 3, H, W)`` in [0, 1] to ``(n, d)`` and runs frozen;
    the standard one is :class:`InceptionV3Features` (``from_weights``).

    Args:
        feature_extractor: the network; torchmetrics reads its width from ``num_features`` (or
            runs it once on a 299 px image).
    """

    input_keys = ("generated", "target")

    def __init__(self, feature_extractor: nn.Module, **kwargs: object) -> None:
        feature = Frozen(feature_extractor)
        if hasattr(feature_extractor, "num_features"):
            feature.num_features = feature_extractor.num_features
        super().__init__(feature=feature, normalize=True, **kwargs)

    @classmethod
    def from_weights(cls, weights: str | Path, **kwargs: object) -> "FrechetInceptionDistance":
        """FID with the standard FID Inception-v3 (torch-fidelity port) from a local file."""
        return cls(InceptionV3Features(weights), **kwargs)

    def update(self, generated: Tensor | None = None, target: Tensor | None = None) -> None:
        """Add the frames of generated and/or target clips (or images)."""
        for samples, real in ((generated, False), (target, True)):
            if exists(samples):
                super().update(samples.flatten(0, -4), real=real)


class FrechetVideoDistance(FrechetFeatureDistance):
    """FVD over clips (StyleGAN-V protocol: I3D features of ``num_frames``-frame clips).

    ``update(generated, target)`` takes clips ``(b, f, 3, H, W)`` in [0, 1]. Each clip is cut
    into ``f // num_frames`` consecutive, non-overlapping ``num_frames``-frame pieces, each one
    sample. Clips shorter than ``num_frames`` (tiny tests) are used whole, with a warning. The
    extractor maps clips ``(n, t, 3, H, W)`` in [0, 1] to ``(n, d)``; the standard one is
    :class:`I3DFeatures` (``from_weights``).

    Args:
        feature_extractor: clip feature network.
        num_features: its output width; default ``feature_extractor.num_features``.
        num_frames: frames per FVD sample (16 in the standard protocol).
    """

    def __init__(
        self,
        feature_extractor: nn.Module,
        num_features: int | None = None,
        num_frames: int = 16,
        **kwargs: object,
    ) -> None:
        super().__init__(feature_extractor, num_features, **kwargs)
        self.num_frames = num_frames

    @classmethod
    def from_weights(cls, weights: str | Path, **kwargs: object) -> "FrechetVideoDistance":
        """FVD with StyleGAN-V's TorchScript I3D from a local file."""
        return cls(I3DFeatures(weights), **kwargs)

    def features(self, samples: Tensor) -> Tensor:
        """Features ``(b·pieces, d)`` of the clips ``(b, f, 3, H, W)``."""
        frames = samples.shape[1]
        if frames < self.num_frames:
            warnings.warn(
                f"FVD on {frames}-frame clips; the standard protocol uses {self.num_frames}",
                stacklevel=3,
            )
            return self.feature_extractor(samples)
        pieces = frames // self.num_frames
        clips = rearrange(
            samples[:, : pieces * self.num_frames], "b (n t) c h w -> (b n) t c h w", n=pieces
        )
        return self.feature_extractor(clips)
