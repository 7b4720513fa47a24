"""Metric suites: every metric behind one batch format and one flat result dict.

:class:`MetricSuite` runs a set of metrics from one batch; a :class:`SuiteFactory` builds one
per compared model: :class:`StandardMetrics` with the standard networks for real data,
:class:`~moee.evaluation.synthemo.SynthEmoMetrics` with the SynthEmo probes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from moee.metrics import (
    AverageEmotionDistance,
    AverageKeypointDistance,
    FrechetInceptionDistance,
    FrechetVideoDistance,
    LearnedPerceptualSimilarity,
    LipSync,
)
from moee.metrics._utils import require_file

IMAGE_KEYS = ("generated", "target", "reference")


class MetricSuite(MetricCollection):
    """A ``MetricCollection`` fed from one batch dict that returns the paper's columns as floats.

    The batch is a dict with
        ``generated``: clips ``(b, f, 3, H, W)``, the model's frames;
        ``target``: clips ``(b, f, 3, H, W)``, the ground truth for the same audio;
        ``reference``: images ``(b, 3, H, W)``, the portrait the clips were made from;
        ``audio``: ``(b, samples)`` at 16 kHz in [-1, 1];
        ``requested_emotion`` (optional): ``(b,)`` class indices of the requested emotion;
        ``requested_au`` (optional): ``(b, A)`` requested AU intensities.
    Images are in ``value_range`` ([0, 1] by default; ``(-1, 1)`` for raw VAE decodes) and are
    mapped to [0, 1] for the metrics. Each metric declares the batch keys it reads
    (``input_keys``) and is skipped for batches that lack one of them, so the SynthEmo-only
    scores simply stay silent on real data. Every DDP rank must send batches with the same keys.

    ``compute()`` is the collection's flat dict, as floats, of the metrics that received a
    batch: a metric that computes a tensor is reported under its name (use the paper's column
    names: ``FID``, ``FVD``, ``LPIPS``, ``AKD``, ``AED``, ``AU-MAE``, ``ID-Sim``); one that
    computes a dict contributes its own keys (``Sync-C``, ``Sync-D`` from :class:`LipSync`,
    ``Emotion-Acc`` and ``Emotion-Acc/<class>`` from :class:`EmotionAccuracy`).

    From a Lightning callback: ``suite.update(batch)`` per test batch,
    ``pl_module.log_dict(suite.compute())`` and ``suite.reset()`` at epoch end; keep the suite
    on the module's device (``suite.to(pl_module.device)``).

    Args:
        metrics: name → metric.
        value_range: the (low, high) range of the batch's images.
    """

    def __init__(
        self, metrics: Mapping[str, Metric], value_range: tuple[float, float] = (0.0, 1.0)
    ) -> None:
        super().__init__(dict(metrics), compute_groups=False)
        self.value_range = value_range

    def subset(self, keep: Callable[[Metric], bool]) -> MetricCollection:
        """The metrics for which ``keep`` holds, as a collection of the same metric objects."""
        return MetricCollection(
            {name: metric for name, metric in self.items(keep_base=True, copy_state=False)
             if keep(metric)},
            compute_groups=False,
        )

    def update(self, batch: Mapping[str, Tensor]) -> None:
        """Update every metric whose inputs are all in ``batch``."""
        low, high = self.value_range
        batch = {
            key: (value - low) / (high - low) if key in IMAGE_KEYS else value
            for key, value in batch.items()
        }
        self.subset(lambda metric: set(metric.input_keys) <= batch.keys()).update(**batch)

    def compute(self) -> dict[str, float]:
        """Flat ``{column: value}`` of every metric that was updated (synced under DDP)."""
        results = self.subset(lambda metric: metric.update_called).compute()
        return {column: float(value) for column, value in results.items()}


class SuiteFactory:
    """Builds a fresh :class:`MetricSuite` (one per compared model) reading [-1, 1] batches."""

    def build(self) -> MetricSuite:
        """A new suite with its own metric states."""
        raise NotImplementedError


class FaceMeshLandmarks:
    """MediaPipe's face mesh as an AKD landmark detector: images ``(n, 3, H, W)`` in [0, 1] →
    iBUG-68 ``(n, 68, 2)`` in [0, 1]; NaN where no face is found (AKD skips those)."""

    def __init__(self) -> None:
        from moee.data.faces import FaceMeshLandmarker

        self.landmarker = FaceMeshLandmarker()

    def __call__(self, images: Tensor) -> Tensor:
        """``(n, 3, H, W)`` → ``(n, 68, 2)``."""
        frames = images.clamp(0, 1).mul(255).round().byte().movedim(1, -1).cpu().numpy()
        return torch.from_numpy(self.landmarker(frames)[0]).to(images.device)


class ScriptedExtractor(nn.Module):
    """A TorchScript image network ``(n, 3, H, W)`` in [0, 1] → ``(n, c)`` from a local file
    (the expression-coefficient model of AED on real data)."""

    def __init__(self, path: str | Path, what: str) -> None:
        super().__init__()
        path = require_file(path, what, "export the model with torch.jit.save and set its path")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
            self.net = torch.jit.load(str(path), map_location="cpu")

    def forward(self, images: Tensor) -> Tensor:
        """``(n, 3, H, W)`` → ``(n, c)``."""
        return self.net(images)


class StandardMetrics(SuiteFactory):
    """The paper's columns with the standard networks, for real data (every file local).

    Args:
        inception: ``pt_inception-2015-12-05-6726825d.pth`` (FID).
        i3d: ``i3d_torchscript.pt`` (FVD).
        lpips_backbone: torchvision AlexNet (or VGG) checkpoint (LPIPS).
        syncnet: ``syncnet_v2.model`` (Sync-C/D).
        lpips_net: ``alex`` or ``vgg``.
        lpips_linear: LPIPS linear layers (default: the ``lpips`` package's).
        landmarks: ``mediapipe`` face mesh for AKD, or ``None`` to leave AKD out.
        expression: TorchScript expression-coefficient model for AED, or ``None`` to leave
            AED out.
        fvd_frames: frames per FVD sample (16 in the standard protocol).
        sync_max_offset: SyncNet's offsets (15 in the standard protocol).
    """

    def __init__(self, inception: str, i3d: str, lpips_backbone: str, syncnet: str,
                 lpips_net: Literal["alex", "vgg"] = "alex", lpips_linear: str | None = None,
                 landmarks: Literal["mediapipe"] | None = "mediapipe",
                 expression: str | None = None, fvd_frames: int = 16,
                 sync_max_offset: int = 15) -> None:
        self.inception, self.i3d, self.syncnet = inception, i3d, syncnet
        self.lpips = (lpips_backbone, lpips_net, lpips_linear)
        self.landmarks = landmarks
        self.expression = expression
        self.fvd_frames = fvd_frames
        self.sync_max_offset = sync_max_offset

    def build(self) -> MetricSuite:
        """The suite; a missing weights file is a one-line error naming what to download."""
        metrics = {
            "FID": FrechetInceptionDistance.from_weights(self.inception),
            "FVD": FrechetVideoDistance.from_weights(self.i3d, num_frames=self.fvd_frames),
            "LPIPS": LearnedPerceptualSimilarity.from_weights(*self.lpips),
            "Sync": LipSync.from_weights(self.syncnet, max_offset=self.sync_max_offset),
        }
        if self.landmarks == "mediapipe":
            metrics["AKD"] = AverageKeypointDistance(landmark_detector=FaceMeshLandmarks())
        if self.expression is not None:
            metrics["AED"] = AverageEmotionDistance(
                ScriptedExtractor(self.expression, "AED expression model"))
        return MetricSuite(metrics, value_range=(-1.0, 1.0))
