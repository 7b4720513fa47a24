"""SynthEmo speed: rendering frames/s per core by size, audio synthesis, end-to-end shard writing.

    python benchmarks/bench_synth.py [--frames 300] [--clips 8]

Rendering and audio run in this one process and are timed in CPU seconds of this process
(``time.process_time``), so "per core" figures hold on a busy shared machine too; wall-clock
figures follow in brackets. Shard writing (H.264 encoding included) is timed by the wall clock.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from moee.data.media import AUDIO_RATE, SAMPLES_PER_FRAME
from moee.data.synth.audio import synthesize_speech
from moee.data.synth.face import FaceRenderer
from moee.data.synth.generator import ClipConfig, apex_aus, generate_dataset, head_motion
from moee.data.synth.identity import sample_identity
from moee.emotions import EMOTION_CLASSES


def _timed(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) that ``fn()`` takes."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def bench_render(size: int, frames: int) -> tuple[float, float]:
    """Frames per CPU second and per wall second of FaceRenderer.render at ``size`` px."""
    rng = np.random.default_rng(0)
    face = FaceRenderer(sample_identity(0, 1), size)
    inputs = [(apex_aus(EMOTION_CLASSES[i % 11], 0.8, rng), rng.uniform(0, 1, 3),
               head_motion(1, rng)[0]) for i in range(frames)]
    cpu, wall = _timed(lambda: [face.render(*args) for args in inputs])
    return frames / cpu, frames / wall


def bench_audio(seconds: float = 20.0) -> tuple[float, float]:
    """Seconds of speech synthesised per CPU second and per wall second."""
    frames = int(seconds * AUDIO_RATE / SAMPLES_PER_FRAME)
    cpu, wall = _timed(lambda: synthesize_speech(frames, "happy", np.random.default_rng(0)))
    return seconds / cpu, seconds / wall


def bench_shards(clips: int, size: int = 64, workers: int = 1) -> float:
    """Clips (50 frames, with MNS references) written to shards per second."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        generate_dataset(folder, ClipConfig(size=size, num_frames=50), (1, 0, 0),
                         clips_per_identity=clips, shard_size=clips, workers=workers,
                         progress=False)
        return clips / (time.perf_counter() - start)


def main() -> None:
    """Print every figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per render size")
    parser.add_argument("--clips", type=int, default=8, help="clips for the shard benchmark")
    args = parser.parse_args()
    print("render, frames/s per core (wall):")
    for size in (32, 64, 128, 256, 512):
        per_core, wall = bench_render(size, args.frames)
        print(f"  {size:4d} px  {per_core:8.0f}  ({wall:.0f})")
    per_core, wall = bench_audio()
    print(f"audio: {per_core:.0f}x real time per core ({wall:.0f}x)")
    print(f"shards (64 px, 50-frame clips, 1 worker): {bench_shards(args.clips):.2f} clips/s")


if __name__ == "__main__":
    main()
