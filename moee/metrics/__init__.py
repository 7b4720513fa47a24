"""Evaluation metrics of MoEE as DDP-correct torchmetrics ``Metric``s.

Paper columns: FID (:class:`FrechetInceptionDistance`), FVD (:class:`FrechetVideoDistance`),
LPIPS (:class:`LearnedPerceptualSimilarity`), AKD (:class:`AverageKeypointDistance`),
AED (:class:`AverageEmotionDistance`), Sync-C / Sync-D (:class:`LipSync`); SynthEmo scores:
Emotion-Acc (:class:`EmotionAccuracy`), AU-MAE (:class:`AUError`), ID-Sim
(:class:`IdentitySimilarity`). :class:`moee.evaluation.suites.MetricSuite` runs them all from
one batch.

Every network is injected; the standard ones load from local files only (``from_weights``)
and a missing file is a one-line ``FileNotFoundError`` saying what to download.
Images and clips are in [0, 1] everywhere.
"""

from moee.metrics.face import AverageEmotionDistance, AverageKeypointDistance
from moee.metrics.features import (
    I3DFeatures,
    InceptionV3Features,
    RandomConvFeatures,
    RandomConvVideoFeatures,
)
from moee.metrics.frechet import (
    FrechetFeatureDistance,
    FrechetInceptionDistance,
    FrechetVideoDistance,
    GaussianStatsMixin,
    frechet_distance,
)
from moee.metrics.perceptual import FeatureDistance, LearnedPerceptualSimilarity, LPIPSNetwork
from moee.metrics.probe_scores import AUError, EmotionAccuracy, IdentitySimilarity
from moee.metrics.sync import LipSync, best_offset, offset_distances, sync_scores
from moee.metrics.syncnet import SyncNet, SyncNetAudioEmbedder, SyncNetVideoEmbedder, mfcc

__all__ = [
    "AUError",
    "AverageEmotionDistance",
    "AverageKeypointDistance",
    "EmotionAccuracy",
    "FeatureDistance",
    "FrechetFeatureDistance",
    "FrechetInceptionDistance",
    "FrechetVideoDistance",
    "GaussianStatsMixin",
    "I3DFeatures",
    "IdentitySimilarity",
    "InceptionV3Features",
    "LPIPSNetwork",
    "LearnedPerceptualSimilarity",
    "LipSync",
    "RandomConvFeatures",
    "RandomConvVideoFeatures",
    "SyncNet",
    "SyncNetAudioEmbedder",
    "SyncNetVideoEmbedder",
    "best_offset",
    "frechet_distance",
    "mfcc",
    "offset_distances",
    "sync_scores",
]
