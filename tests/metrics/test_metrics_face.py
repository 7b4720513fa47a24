"""AKD, AED and the SynthEmo scores on inputs whose answer is known exactly."""

import math

import pytest
import torch

from moee.metrics import (
    AUError,
    AverageEmotionDistance,
    AverageKeypointDistance,
    EmotionAccuracy,
    IdentitySimilarity,
)


def test_akd_of_landmarks_shifted_by_known_pixels():
    target = torch.rand(2, 3, 68, 2, dtype=torch.float64) * 0.5 + 0.25
    shifted = target + torch.tensor([3 / 64, 4 / 128], dtype=torch.float64)  # 3 px right, 4 down
    metric = AverageKeypointDistance(image_size=(128, 64))  # H = 128, W = 64
    metric.update(shifted, target)
    assert metric.compute().item() == pytest.approx(5.0, abs=1e-9)


def test_akd_leaves_out_landmarks_a_detector_did_not_find():
    target = torch.zeros(1, 2, 4, 2)
    generated = target + torch.tensor([0.0, 2 / 100])
    generated[0, 1] = math.nan  # no face in frame 1
    metric = AverageKeypointDistance(image_size=100)
    metric.update(generated, target)
    assert metric.count.item() == 4
    assert metric.compute().item() == pytest.approx(2.0)


def brightest_pixel(images: torch.Tensor) -> torch.Tensor:
    """A toy landmark detector: the brightest pixel of channel 0 as one (x, y) landmark."""
    n, _, height, width = images.shape
    index = images[:, 0].flatten(1).argmax(1)
    xy = torch.stack([index % width / width, index // width / height], dim=-1)
    return xy.reshape(n, 1, 2)


def test_akd_with_a_landmark_detector_on_frames():
    frames = torch.zeros(2, 3, 3, 40, 50)
    frames[:, :, 0, 10, 20] = 1
    moved = frames.roll(shifts=(6, -8), dims=(-2, -1))  # 6 px down, 8 px left
    metric = AverageKeypointDistance(landmark_detector=brightest_pixel)
    metric.update(moved, frames)
    assert metric.compute().item() == pytest.approx(10.0)


def test_akd_needs_a_detector_or_an_image_size():
    with pytest.raises(ValueError, match="landmark_detector or an image_size"):
        AverageKeypointDistance()


@pytest.mark.parametrize(("norm", "expected"), [("l1", 7.0), ("l2", 5.0)])
def test_aed_of_constructed_coefficients(norm, expected):
    target = torch.randn(2, 5, 3)
    generated = target + torch.tensor([3.0, -4.0, 0.0])
    metric = AverageEmotionDistance(norm=norm)
    metric.update(generated, target)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6)


def test_aed_with_an_extractor_compares_frame_by_frame():
    def mean_colour(images: torch.Tensor) -> torch.Tensor:
        return images.mean((-2, -1))  # n 3

    target = torch.full((1, 2, 3, 4, 4), 0.5)
    generated = target.clone()
    generated[0, 1, 0] = 0.9  # one frame's red channel differs by 0.4
    metric = AverageEmotionDistance(emotion_extractor=mean_colour)
    metric.update(generated, target)
    assert metric.compute().item() == pytest.approx(0.2)  # (0 + 0.4) / 2 frames


def test_emotion_accuracy_per_requested_class():
    names = ["angry", "happy", "sad", "happily surprised"]
    logits = torch.full((4, 3, 4), -5.0)  # b f c
    logits[0, :, 0] = 5  # requested angry, shows angry
    logits[1, :, 3] = 5  # requested happily surprised, shows happily surprised
    logits[2, :, 1] = 5  # requested sad, shows happy
    logits[3, :2, 3], logits[3, 2, 1] = 5, 5  # requested happily surprised, mostly shows it
    metric = EmotionAccuracy(names)
    metric.update(logits, torch.tensor([0, 3, 2, 3]))
    scores = {key: value.item() for key, value in metric.compute().items()}
    assert scores == pytest.approx(
        {
            "Emotion-Acc": 0.75,
            "Emotion-Acc/angry": 1.0,
            "Emotion-Acc/sad": 0.0,
            "Emotion-Acc/happily surprised": 1.0,
        }
    )


def test_emotion_accuracy_with_a_classifier_on_frames():
    def colour_classifier(images: torch.Tensor) -> torch.Tensor:
        return images.mean((-2, -1)) * 10  # n 3: the dominant colour is the class

    frames = torch.zeros(2, 2, 3, 4, 4)
    frames[0, :, 2], frames[1, :, 0] = 1, 1
    metric = EmotionAccuracy(["r", "g", "b"], emotion_classifier=colour_classifier)
    metric.update(frames, torch.tensor([2, 1]))
    assert metric.compute()["Emotion-Acc"].item() == 0.5


def test_au_error_against_requested_intensities():
    requested = torch.tensor([[0.0, 1.0, 0.5]])
    predicted = requested[:, None].repeat(1, 4, 1)
    predicted[0, :, 1] -= 0.3  # AU 2 is 0.3 short on every frame
    metric = AUError()
    metric.update(predicted, requested)
    assert metric.compute().item() == pytest.approx(0.1)


def test_identity_similarity_is_the_mean_cosine_to_the_reference():
    reference = torch.tensor([[1.0, 0.0]])
    frames = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]])  # cos 1, 0, √½
    metric = IdentitySimilarity()
    metric.update(frames, reference)
    assert metric.compute().item() == pytest.approx((1 + math.sqrt(0.5)) / 3)


def test_identity_similarity_embeds_frames_and_reference():
    def flatten(images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)

    reference = torch.rand(2, 3, 4, 4)
    clips = torch.stack([reference, 2 * reference], dim=1)  # same direction, other scale
    metric = IdentitySimilarity(identity_embedder=flatten)
    metric.update(clips, reference)
    assert metric.compute().item() == pytest.approx(1.0)
