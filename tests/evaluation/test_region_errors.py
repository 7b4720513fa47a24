"""``benchmarks/bench_regions.py``: pixel error by face region against the truth's landmarks."""

import json

import numpy as np
import pytest

from moee.data.synth.generator import renderer
from moee.emotions import parse_emotion


@pytest.fixture
def bench_regions(benchmarks_importable):
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


def test_the_bench_reads_a_run_and_finds_a_chin_painted_into_one_video(bench_regions, tmp_path,
                                                                      capsys):
    """End to end on real shards and mp4s: videos that are their own clips (re-encoded) err
    little everywhere; the one whose chin is painted over errs there; a run without videos is
    one line."""
    from moee.data.media import write_mp4
    from moee.data.synth.generator import ClipConfig, generate_dataset
    from moee.showcase import held_out_people, plan_videos

    data = generate_dataset(tmp_path / "synthemo", ClipConfig(seed=3, size=64, num_frames=8),
                            (1, 1, 1), progress=False)
    with pytest.raises(SystemExit, match="error: no video of the test people"):
        bench_regions.main(run=tmp_path / "run", data=data)
    for video in plan_videos(held_out_people(data / "test"), ("basic",)):
        frames = video.speech_clip.frames.copy()
        if video.asked == "surprised":
            for frame, landmarks in zip(frames, video.speech_clip.landmarks):
                frame[bench_regions.region_masks(landmarks, 64)["chin"]] = (0, 255, 0)
        write_mp4(tmp_path / "run" / "videos" / f"{video.name}.mp4", frames)
    bench_regions.main(run=tmp_path / "run", data=data, json_out=tmp_path / "regions.json",
                       sheet=tmp_path / "regions.png")
    means = json.loads((tmp_path / "regions.json").read_text())
    assert set(means) == {"angry", "disgusted", "fear", "happy", "sad", "surprised"}
    painted = means["surprised"].pop("chin")
    assert painted > 60
    assert max(error for row in means.values() for error in row.values()) < 10  # mp4 only
    assert (tmp_path / "regions.png").exists() and "surprised" in capsys.readouterr().out
