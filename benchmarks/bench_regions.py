"""Where do a model's videos differ from the truth? Pixel error by face region, per emotion.

The quickstart animates every test identity's neutral portrait with the speech of its clip of
each emotion (:mod:`moee.showcase`); that clip is the ground truth of the video. This script
compares each basic and compound video's last ``--frames`` frames with the clip's frames of the
same index, as mean absolute error (0-255, over RGB) in regions cut from the truth's landmarks:
the brows, the eyes, the mouth, the chin (below the mouth, down to the jaw line's lowest point,
where a dropped jaw moves the face outline over the neck) and the rest of the frame. The
probes say whether an emotion reads; this says where the pixels are wrong, without a learnt
network in between. With ``--sheet``, a row per emotion: the truth, the video and the error of
the first person, and the error averaged over everyone (white: 85 or more).

    python benchmarks/bench_regions.py [--run runs/tiny] [--data runs/synthemo] \\
        [--frames 4] [--sheet regions.png] [--json_out regions.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from jsonargparse import CLI

from moee.data.media import MediaError, read_video
from moee.data.shards import ShardError
from moee.data.synth.sheet import with_header, write_png
from moee.showcase import held_out_people, plan_videos, with_row_labels
from moee.utils import write_json

REGION_LANDMARKS = {"brows": range(17, 27), "eyes": range(36, 48), "mouth": range(48, 68)}
"""iBUG-68 points whose box (plus a margin) is each region."""
REGIONS = (*REGION_LANDMARKS, "chin", "rest")
"""The regions, in report order."""
JAW_BELOW_MOUTH = range(5, 12)
"""Jaw-line points that bound the chin region left, right and below."""
ERROR_WHITE = 85.0
"""The error (0-255) drawn white in the sheet's error maps."""


def region_masks(landmarks: np.ndarray, size: int, margin: int = 2) -> dict[str, np.ndarray]:
    """Boolean (size, size) masks of :data:`REGIONS` from one frame's (68, 2) landmarks in
    [0, 1] (x, y). Each landmark region is its points' box widened by ``margin`` px; the chin
    spans the jaw points 5-11 left to right, from below the mouth's box down to their lowest
    point (plus the margin); the rest is every pixel in none of them. They do not overlap."""
    px = landmarks * size
    rows, cols = np.mgrid[:size, :size] + 0.5
    masks = {}
    for name, points in REGION_LANDMARKS.items():
        (x0, y0), (x1, y1) = px[points].min(0) - margin, px[points].max(0) + margin
        masks[name] = (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)
    jaw = px[JAW_BELOW_MOUTH]
    masks["chin"] = ((cols >= jaw[:, 0].min()) & (cols <= jaw[:, 0].max())
                     & (rows <= jaw[:, 1].max() + margin) & ~masks["mouth"]
                     & (rows > px[REGION_LANDMARKS["mouth"], 1].max()))
    masks["brows"] &= ~masks["eyes"]
    masks["rest"] = ~np.any([masks[name] for name in REGIONS[:-1]], 0)
    return masks


def region_errors(made: np.ndarray, truth: np.ndarray, landmarks: np.ndarray) -> dict[str, float]:
    """Mean absolute error (0-255, over RGB) of frames ``made`` against ``truth`` (both
    (T, H, W, 3) uint8) in each region of the truth's (T, 68, 2) landmarks, over all T."""
    error = np.abs(made.astype(np.float32) - truth.astype(np.float32)).mean(-1)
    sums = dict.fromkeys(REGIONS, 0.0)
    counts = dict.fromkeys(REGIONS, 0)
    for frame_error, frame_landmarks in zip(error, landmarks):
        for name, mask in region_masks(frame_landmarks, error.shape[-1]).items():
            sums[name] += float(frame_error[mask].sum())
            counts[name] += int(mask.sum())
    return {name: sums[name] / max(counts[name], 1) for name in REGIONS}


def main(run: Path = Path("runs/tiny"), data: Path = Path("runs/synthemo"), frames: int = 4,
         sheet: Path | None = None, json_out: Path | None = None) -> None:
    """Print each emotion's error per region, averaged over the test people.

    Args:
        run: a quickstart run folder (its ``videos/`` are read).
        data: the SynthEmo folder whose ``test`` split the videos were made from.
        frames: how many last frames of each video to compare.
        sheet: write the error contact sheet there.
        json_out: write ``{emotion: {region: error}}`` there.
    """
    if frames < 1:
        sys.exit(f"error: --frames must be at least 1, got {frames}")
    try:
        people = held_out_people(data / "test")
        plan = [video for video in plan_videos(people, ("basic", "compound"))
                if (run / "videos" / f"{video.name}.mp4").exists()]
        if not plan:
            raise FileNotFoundError(f"no video of the test people in {run / 'videos'}")
        made = {video.name: read_video(run / "videos" / f"{video.name}.mp4")[0]
                for video in plan}
    except (ShardError, MediaError, FileNotFoundError) as error:
        sys.exit(f"error: {error} (run the quickstart, or pass --run and --data of a run)")
    table: dict[str, list[dict[str, float]]] = {}
    maps: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for video in plan:
        video_frames = made[video.name]
        last = range(max(len(video_frames) - frames, 0), len(video_frames))
        clip = video.speech_clip
        table.setdefault(video.asked, []).append(region_errors(
            video_frames[last], clip.frames[last], clip.landmarks[last]))
        maps.setdefault(video.asked, []).append(
            (video_frames[-1], clip.frames[len(video_frames) - 1]))
    means = {emotion: {name: float(np.mean([row[name] for row in rows])) for name in REGIONS}
             for emotion, rows in table.items()}
    print(f"mean absolute error (0-255) by region, last {frames} frames, over the test people "
          f"({len(people)} for basic labels, those with videos for compounds):")
    print(f"{'':>18}" + "".join(f"{name:>8}" for name in REGIONS))
    for emotion, row in means.items():
        print(f"{emotion:>18}" + "".join(f"{row[name]:8.1f}" for name in REGIONS))
    if json_out is not None:
        write_json(json_out, means)
    if sheet is not None:
        write_png(sheet, error_sheet(maps))
        print(f"sheet: {sheet}")


def error_sheet(maps: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> np.ndarray:
    """A row per emotion: the first person's truth, video and error map, and the error map
    averaged over every person (white: :data:`ERROR_WHITE`)."""

    def grey(error: np.ndarray) -> np.ndarray:
        level = np.clip(error / ERROR_WHITE * 255, 0, 255).astype(np.uint8)
        return np.repeat(level[..., None], 3, -1)

    def error(made: np.ndarray, truth: np.ndarray) -> np.ndarray:
        return np.abs(made.astype(np.float32) - truth.astype(np.float32)).mean(-1)

    rows = []
    for pairs in maps.values():
        made, truth = pairs[0]
        mean = np.mean([error(*pair) for pair in pairs], 0)
        rows.append(np.concatenate([truth, made, grey(error(made, truth)), grey(mean)], 1))
    grid = with_row_labels(np.concatenate(rows, 0), list(maps))
    size = rows[0].shape[0]
    header = with_header(grid[:0, -4 * size:], ["truth", "video", "error", "mean error"], size)
    return np.concatenate([np.pad(header, ((0, 0), (grid.shape[1] - 4 * size, 0), (0, 0)),
                                  constant_values=255), grid], 0)


if __name__ == "__main__":
    CLI(main, as_positional=False)
