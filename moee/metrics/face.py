"""Paired face-geometry and expression distances of the paper: AKD and AED."""

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from moee.metrics._utils import RunningMean, exists, extract, optional_frozen


class AverageKeypointDistance(RunningMean):
    """AKD: mean Euclidean distance in pixels between corresponding landmarks (lower is better).

    ``update(generated, target)`` takes, with a ``landmark_detector``, clips
    ``(b, f, 3, H, W)`` in [0, 1]; without one, landmarks ``(b, f, K, 2)`` as (x, y) in [0, 1].
    Landmarks are scaled to pixels by ``image_size``, else by the clips' ``(H, W)``. Non-finite
    landmarks (a detector's way to say "no face") are left out of the mean.

    Args:
        landmark_detector: maps images ``(n, 3, H, W)`` in [0, 1] to ``(n, K, 2)`` in [0, 1]:
            a MediaPipe face-mesh or dlib-68 wrapper on real data, a probe net on SynthEmo.
        image_size: ``H`` (square) or ``(H, W)`` in pixels; required without a detector.
    """

    higher_is_better = False
    input_keys = ("generated", "target")

    def __init__(
        self,
        landmark_detector: Callable[[Tensor], Tensor] | None = None,
        image_size: int | tuple[int, int] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if not exists(landmark_detector) and not exists(image_size):
            raise ValueError("AverageKeypointDistance needs a landmark_detector or an image_size")
        self.landmark_detector = optional_frozen(landmark_detector)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else image_size

    def update(self, generated: Tensor, target: Tensor) -> None:
        """Add the pixel distances of all landmark pairs."""
        height, width = self.image_size or generated.shape[-2:]
        generated, target = (extract(self.landmark_detector, x) for x in (generated, target))
        scale = torch.tensor([width, height], dtype=torch.float64, device=generated.device)
        distances = ((generated.double() - target.double()) * scale).norm(dim=-1)  # b f k
        self.accumulate(distances[distances.isfinite()])


class AverageEmotionDistance(RunningMean):
    """AED: mean distance between emotion coefficient vectors of generated and target frames.

    ``update(generated, target)`` takes, with an ``emotion_extractor``, clips
    ``(b, f, 3, H, W)`` in [0, 1]; without one, coefficients ``(b, f, c)`` or ``(b, c)``.
    The distance of two vectors is their L1 norm difference ``Σ|a − b|`` (``norm="l1"``) or
    their Euclidean distance (``norm="l2"``); the metric is its mean over frames and clips.

    Args:
        emotion_extractor: maps images ``(n, 3, H, W)`` to coefficients ``(n, c)`` (e.g. an
            expression-coefficient regressor on real data, the emotion probe on SynthEmo).
        norm: ``"l1"`` or ``"l2"``.
    """

    higher_is_better = False
    input_keys = ("generated", "target")

    def __init__(
        self,
        emotion_extractor: Callable[[Tensor], Tensor] | None = None,
        norm: Literal["l1", "l2"] = "l1",
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
        self.emotion_extractor = optional_frozen(emotion_extractor)
        self.p = 1 if norm == "l1" else 2

    def update(self, generated: Tensor, target: Tensor) -> None:
        """Add the distances of all coefficient-vector pairs."""
        generated, target = (extract(self.emotion_extractor, x) for x in (generated, target))
        self.accumulate(torch.linalg.vector_norm(generated - target, ord=self.p, dim=-1))
