"""The metric suite on SynthEmo: the probe networks stand in for every pretrained metric net.

=============  ==========================================================================
column         SynthEmo measurement (real-data network it replaces)
=============  ==========================================================================
FID            Fréchet distance of the expression probe's trunk features (Inception)
FVD            of their clip statistics: mean and mean frame-to-frame change (I3D)
LPIPS          LPIPS-style distance on the probe's conv activations (AlexNet + linear)
AKD            probe landmarks, pixels (face-mesh / dlib landmarks)
AED            L1 distance of probe emotion probabilities (expression coefficients)
Sync-C/D       mouth opening vs the audio's loudness envelope, per 5-frame window (SyncNet)
Emotion-Acc    probe emotion class vs the requested one (11 classes)
AU-MAE         probe AU intensities vs the clip's mean AUs
ID-Sim         cosine similarity of probe identity embeddings to the reference
=============  ==========================================================================

SynthEmo's mouth opening follows its speech loudness (correlation ≈ 0.95 at zero lag), so the
sync windows are the two per-frame curves, centred and scaled to unit length: the distance of
two windows is ``sqrt(2 − 2 r)`` with ``r`` their Pearson correlation. Every extractor takes
images in [0, 1] like all metrics (the probes read [-1, 1]).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from moee.data.media import SAMPLES_PER_FRAME
from moee.emotions import EMOTION_CLASSES
from moee.evaluation.probes import SynthEmoProbes, load_probes
from moee.evaluation.suites import MetricSuite, SuiteFactory
from moee.metrics._utils import per_frame
from moee.metrics.face import AverageEmotionDistance, AverageKeypointDistance
from moee.metrics.frechet import FrechetInceptionDistance, FrechetVideoDistance
from moee.metrics.perceptual import FeatureDistance, LearnedPerceptualSimilarity
from moee.metrics.probe_scores import AUError, EmotionAccuracy, IdentitySimilarity
from moee.metrics.sync import LipSync

ProbeOutput = Literal[
    "emotion_logits", "emotion_probabilities", "action_units", "landmarks", "mouth_opening",
    "identity_embedding",
]


def _probe_input(probes: SynthEmoProbes, images: Tensor) -> Tensor:
    """Images ``(n, 3, H, W)`` in [0, 1] → the probes' input: [-1, 1] at their size."""
    images = images * 2 - 1
    if images.shape[-2:] != (probes.size, probes.size):
        images = F.interpolate(images, size=(probes.size, probes.size), mode="bilinear",
                               antialias=True, align_corners=False)
    return images


class ProbeHead(nn.Module):
    """One output of :class:`SynthEmoProbes` as a function of images in [0, 1].

    Args:
        probes: the probe networks (shared between heads).
        output: which output: a :class:`SynthEmoProbes` method or ``emotion_probabilities``
            (softmax of the logits).
    """

    def __init__(self, probes: SynthEmoProbes, output: ProbeOutput) -> None:
        super().__init__()
        self.probes = probes
        self.output = output

    def forward(self, images: Tensor) -> Tensor:
        """``(n, 3, H, W)`` in [0, 1] → ``(n, ...)``."""
        images = images * 2 - 1
        if self.output == "emotion_probabilities":
            return self.probes.emotion_logits(images).softmax(-1)
        return getattr(self.probes, self.output)(images)


class ProbeFeatures(nn.Module):
    """The expression probe's trunk output (256 features per image), for FID.

    Images ``(n, 3, H, W)`` in [0, 1] → ``(n, 256)``.
    """

    def __init__(self, probes: SynthEmoProbes) -> None:
        super().__init__()
        self.probes = probes
        self.num_features = probes.expression.trunk[-2].out_features

    def forward(self, images: Tensor) -> Tensor:
        """``(n, 3, H, W)`` → ``(n, 256)``."""
        return self.probes.expression.trunk(_probe_input(self.probes, images))


class ProbeVideoFeatures(ProbeFeatures):
    """Clip features for FVD: the mean over time of :class:`ProbeFeatures` (appearance) and the
    mean absolute change between consecutive frames (motion).

    Clips ``(n, t, 3, H, W)`` in [0, 1] → ``(n, 512)``.
    """

    def __init__(self, probes: SynthEmoProbes) -> None:
        super().__init__(probes)
        self.num_features *= 2

    def forward(self, clips: Tensor) -> Tensor:
        """``(n, t, 3, H, W)`` → ``(n, 512)``."""
        frames = per_frame(super().forward, clips)  # n t d
        motion = (frames[:, 1:] - frames[:, :-1]).abs().mean(1)
        return torch.cat([frames.mean(1), motion], dim=-1)


class ProbeLayers(nn.Module):
    """The expression probe's ReLU activations at every resolution, for an LPIPS-style distance.

    Images ``(n, 3, H, W)`` in [-1, 1] (what :class:`LearnedPerceptualSimilarity` passes on)
    → one ``(n, c, h, w)`` map per conv block.
    """

    def __init__(self, probes: SynthEmoProbes) -> None:
        super().__init__()
        self.probes = probes

    def forward(self, images: Tensor) -> list[Tensor]:
        """``(n, 3, H, W)`` → a list of maps."""
        x = _probe_input(self.probes, (images + 1) / 2)
        maps = []
        for layer in self.probes.expression.trunk:
            if isinstance(layer, nn.AdaptiveAvgPool2d):
                break
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                maps.append(x)
        return maps


def unit_centred(curves: Tensor) -> Tensor:
    """Each row of ``(n, t)`` minus its mean, scaled to unit length (flat rows stay zero)."""
    centred = curves - curves.mean(-1, keepdim=True)
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-6)


class MouthOpeningWindows(nn.Module):
    """Sync video stream: the probe's mouth opening of each frame of a window, unit-centred.

    Frame windows ``(n, t, 3, H, W)`` in [0, 1] → ``(n, t)``.
    """

    def __init__(self, probes: SynthEmoProbes) -> None:
        super().__init__()
        self.mouth = ProbeHead(probes, "mouth_opening")

    def forward(self, windows: Tensor) -> Tensor:
        """``(n, t, 3, H, W)`` → ``(n, t)``."""
        return unit_centred(per_frame(self.mouth, windows))


class AudioEnvelopeWindows(nn.Module):
    """Sync audio stream: the RMS loudness of each frame's audio in a window, unit-centred.

    Audio windows ``(n, t · hop)`` → ``(n, t)``.

    Args:
        hop: audio samples per video frame (640 at 16 kHz and 25 fps).
    """

    def __init__(self, hop: int = SAMPLES_PER_FRAME) -> None:
        super().__init__()
        self.hop = hop

    def forward(self, audio: Tensor) -> Tensor:
        """``(n, t · hop)`` → ``(n, t)``."""
        frames = rearrange(audio, "n (t s) -> n t s", s=self.hop)
        return unit_centred(frames.square().mean(-1).add(1e-8).sqrt())


def synthemo_suite(
    probes: SynthEmoProbes, fvd_frames: int = 8, sync_max_offset: int = 5, sync_window: int = 5
) -> MetricSuite:
    """Every column of the paper and the SynthEmo scores, measured by ``probes``.

    The suite reads batches in [-1, 1] (``value_range=(-1, 1)``), as the network makes them.

    Args:
        probes: trained SynthEmo probes (:func:`moee.evaluation.probes.load_probes`).
        fvd_frames: frames per FVD sample (clips are cut into pieces of this length).
        sync_max_offset: offsets tried by Sync-C/D, in frames (keep well below the clip length).
        sync_window: frames per sync window.
    """
    probes = probes.eval().requires_grad_(False)
    return MetricSuite(
        {
            "FID": FrechetInceptionDistance(ProbeFeatures(probes)),
            "FVD": FrechetVideoDistance(ProbeVideoFeatures(probes), num_frames=fvd_frames),
            "LPIPS": LearnedPerceptualSimilarity(FeatureDistance(ProbeLayers(probes))),
            "AKD": AverageKeypointDistance(landmark_detector=ProbeHead(probes, "landmarks")),
            "AED": AverageEmotionDistance(ProbeHead(probes, "emotion_probabilities")),
            "Sync": LipSync(
                MouthOpeningWindows(probes),
                AudioEnvelopeWindows(),
                window=sync_window,
                max_offset=sync_max_offset,
            ),
            "Emotion-Acc": EmotionAccuracy(
                EMOTION_CLASSES, emotion_classifier=ProbeHead(probes, "emotion_logits")
            ),
            "AU-MAE": AUError(au_estimator=ProbeHead(probes, "action_units")),
            "ID-Sim": IdentitySimilarity(ProbeHead(probes, "identity_embedding")),
        },
        value_range=(-1.0, 1.0),
    )


class SynthEmoMetrics(SuiteFactory):
    """Every column measured by the SynthEmo probes (see the module docstring).

    Args:
        probe_size: side of the frames the probes were trained on (``synth probes --size``).
        probe_cache: cache folder of the probes (default ``$MOEE_CACHE`` or ``~/.cache/moee``).
        fvd_frames: frames per FVD sample.
        sync_max_offset: offsets tried by Sync-C/D, in frames.
    """

    def __init__(self, probe_size: int = 64, probe_cache: str | None = None,
                 fvd_frames: int = 8, sync_max_offset: int = 5) -> None:
        self.probe_size = probe_size
        self.probe_cache = probe_cache
        self.fvd_frames = fvd_frames
        self.sync_max_offset = sync_max_offset

    def build(self) -> MetricSuite:
        """The SynthEmo suite on the cached probes (a missing cache names the command)."""
        probes = load_probes(self.probe_size, self.probe_cache)
        return synthemo_suite(probes, self.fvd_frames, self.sync_max_offset)
