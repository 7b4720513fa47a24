"""``benchmarks/bench_regions.py``: pixel error by face region against the truth's landmarks."""

from pathlib import Path

import numpy as np
import pytest

from moee.data.synth.generator import renderer
from moee.emotions import parse_emotion


@pytest.fixture
def bench_regions(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_regions

    return bench_regions


def surprised_frame() -> tuple[np.ndarray, np.ndarray]:
    aus = np.array(parse_emotion("surprised").au_vector(), np.float32)
    return renderer(0, 3, 64).render(aus, viseme=(1.0, 0.2, 0.0))


def test_regions_split_the_frame_and_the_chin_lies_under_the_mouth(bench_regions):
    _, landmarks = surprised_frame()
    masks = bench_regions.region_masks(landmarks, 64)
    assert list(masks) == list(bench_regions.REGIONS)
    np.testing.assert_array_equal(np.sum(list(masks.values()), 0), np.ones((64, 64)))
    chin_rows = np.nonzero(masks["chin"].any(1))[0]
    assert chin_rows.min() + 0.5 > (landmarks[48:68, 1] * 64).max()  # below the lowest lip point
    assert chin_rows.max() == 63  # a dropped jaw reaches the frame's bottom row
    lower_lip = landmarks[57] * 64
    assert masks["mouth"][int(lower_lip[1]), int(lower_lip[0])]


def test_an_error_under_the_mouth_counts_in_the_chin_only(bench_regions):
    truth, landmarks = surprised_frame()
    masks = bench_regions.region_masks(landmarks, 64)
    made = truth.copy()
    made[masks["chin"]] = np.clip(made[masks["chin"]].astype(int) + 40, 0, 255)
    errors = bench_regions.region_errors(made[None], truth[None], landmarks[None])
    reference = np.abs(made.astype(float) - truth).mean(-1)[masks["chin"]].mean()
    assert errors["chin"] == pytest.approx(reference) and errors["chin"] > 20
    assert {name: errors[name] for name in ("brows", "eyes", "mouth", "rest")} == dict.fromkeys(
        ("brows", "eyes", "mouth", "rest"), 0.0)
