"""MetricSuite: one batch in, the paper's columns out."""

import pytest
import torch
import torch.nn.functional as F

from moee.evaluation.suites import MetricSuite
from moee.metrics import (
    AUError,
    AverageEmotionDistance,
    AverageKeypointDistance,
    EmotionAccuracy,
    FeatureDistance,
    FrechetInceptionDistance,
    FrechetVideoDistance,
    IdentitySimilarity,
    LearnedPerceptualSimilarity,
    LipSync,
    RandomConvFeatures,
    RandomConvVideoFeatures,
)

PAPER_COLUMNS = {"FID", "FVD", "LPIPS", "AKD", "AED", "Sync-C", "Sync-D"}
SYNTHEMO_COLUMNS = {"Emotion-Acc", "AU-MAE", "ID-Sim"}
CLASSES = ["angry", "happy", "sad"]


def colour_centroids(images: torch.Tensor) -> torch.Tensor:
    """Toy landmarks ``(n, 3, 2)``: the brightness-weighted centroid of each channel."""
    height, width = images.shape[-2:]
    weights = images / images.sum((-2, -1), keepdim=True).clamp_min(1e-8)  # n c h w
    x = (weights.sum(-2) * torch.linspace(0, 1, width)).sum(-1)
    y = (weights.sum(-1) * torch.linspace(0, 1, height)).sum(-1)
    return torch.stack([x, y], dim=-1)


def mean_colour(images: torch.Tensor) -> torch.Tensor:
    return images.mean((-2, -1))


def make_suite() -> MetricSuite:
    return MetricSuite(
        {
            "FID": FrechetInceptionDistance(RandomConvFeatures(num_features=8)),
            "FVD": FrechetVideoDistance(RandomConvVideoFeatures(frame_features=4), num_frames=4),
            "LPIPS": LearnedPerceptualSimilarity(
                FeatureDistance(lambda x: [x, F.avg_pool2d(x, 2)])
            ),
            "AKD": AverageKeypointDistance(landmark_detector=colour_centroids),
            "AED": AverageEmotionDistance(emotion_extractor=mean_colour),
            "Sync": LipSync(
                lambda windows: windows.mean((-3, -2, -1)),
                lambda audio: audio.unflatten(-1, (5, -1)).abs().mean(-1),
                max_offset=3,
            ),
            "Emotion-Acc": EmotionAccuracy(CLASSES, emotion_classifier=mean_colour),
            "AU-MAE": AUError(au_estimator=mean_colour),
            "ID-Sim": IdentitySimilarity(identity_embedder=lambda images: images.flatten(1)),
        }
    )


def make_batch(frames: int = 8, size: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(4, frames, 3, size, size, generator=generator)
    return {
        "generated": (target + 0.1 * torch.randn(target.shape, generator=generator)).clamp(0, 1),
        "target": target,
        "reference": target[:, 0],
        "audio": torch.randn(4, frames * 640, generator=generator) * 0.1,
        "requested_emotion": torch.tensor([0, 1, 2, 1]),
        "requested_au": torch.rand(4, 3, generator=generator),
    }


def test_suite_reports_every_column_as_a_float():
    suite = make_suite()
    suite.update(make_batch())
    results = suite.compute()
    per_class = {f"Emotion-Acc/{name}" for name in CLASSES}
    assert set(results) == PAPER_COLUMNS | SYNTHEMO_COLUMNS | per_class
    assert all(isinstance(value, float) for value in results.values())
    assert all(results[column] > 0 for column in ("FID", "LPIPS", "AKD", "AED", "AU-MAE"))


def test_suite_of_the_ground_truth_against_itself():
    batch = make_batch()
    batch["generated"] = batch["target"]
    suite = make_suite()
    suite.update(batch)
    results = suite.compute()
    for column in ("FID", "FVD", "LPIPS", "AKD", "AED"):
        assert results[column] == pytest.approx(0.0, abs=1e-6), column


def test_suite_maps_the_value_range_to_unit():
    batch = make_batch()
    signed = {
        key: value * 2 - 1 if key in ("generated", "target", "reference") else value
        for key, value in batch.items()
    }
    unit_suite, signed_suite = make_suite(), MetricSuite(make_suite(), value_range=(-1, 1))
    unit_suite.update(batch)
    signed_suite.update(signed)
    assert signed_suite.compute() == pytest.approx(unit_suite.compute(), rel=1e-5)


def test_suite_skips_metrics_whose_inputs_are_missing_and_resets():
    batch = make_batch()
    del batch["requested_emotion"], batch["requested_au"]
    suite = make_suite()
    suite.update(batch)
    assert set(suite.compute()) == PAPER_COLUMNS | {"ID-Sim"}
    suite.reset()
    assert suite.compute() == {}
