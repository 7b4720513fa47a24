"""Loader throughput: decoded clips/s and training samples/s per worker, at 64 and 512 px,
decoding every epoch and with the decoded-clip cache (``decoded_cache_mb``), side by side.

Writes procedural shards (tests/clips.py) into a temporary folder, then times full passes
of ``MoEEDataModule.train_dataloader`` (MNS and jitter on, as in expert training) after one
warm-up pass that starts the workers (and fills the cache, as a training run's first epoch
does). Prints one line per (size, workers, cache) and the cache's speed-up.

    python benchmarks/bench_loader.py [--clips 16] [--frames 50] [--num_frames 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from clips import write_test_shards

from moee.data.datamodule import MoEEDataModule
from moee.data.sampling import SamplingOptions


def measure(folder: str, workers: int, num_frames: int, windows: int, batch_size: int,
            clips: int, passes: int, cache_mb: float = 0) -> tuple[float, float]:
    """(clips/s, samples/s) of the whole loader with ``workers`` processes."""
    samples = clips * windows
    dm = MoEEDataModule(train=folder, batch_size=batch_size, num_workers=workers,
                        decoded_cache_mb=cache_mb,
                        sampling=SamplingOptions(num_frames=num_frames, windows_per_clip=windows,
                                                 mns_prob=0.3, jitter_prob=0.3),
                        samples_per_epoch=samples, shuffle_buffer=8)
    loader = dm.train_dataloader()
    for _ in loader:  # warm-up: worker start and first shard opens
        pass
    start, seen = time.perf_counter(), 0
    for _ in range(passes):
        seen += sum(len(batch["key"]) for batch in loader)
    elapsed = time.perf_counter() - start
    return seen / windows / elapsed, seen / elapsed


def main() -> None:
    """Write shards at each size and print throughput per worker count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=50, help="frames per clip (2 s)")
    parser.add_argument("--num_frames", type=int, default=16)
    parser.add_argument("--windows_per_clip", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--cache_mb", type=float, default=4096,
                        help="decoded-clip cache of the second row (enough for every clip)")
    args = parser.parse_args()
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            write_test_shards(folder, identities=args.clips // 4, clips_per_emotion=1,
                              num_frames=args.frames, size=size, shard_size=4)
            print(f"{size} px: wrote {args.clips} clips of {args.frames} frames in "
                  f"{time.perf_counter() - t0:.1f} s")
            for workers in args.workers:
                rates = []
                for cache_mb in (0, args.cache_mb):
                    clips, samples = measure(folder, workers, args.num_frames,
                                             args.windows_per_clip, args.batch_size, args.clips,
                                             args.passes, cache_mb)
                    rates.append(samples)
                    print(f"  {size:4d} px, {workers} worker(s), cache {cache_mb:6.0f} MB: "
                          f"{clips:7.1f} clips/s {samples:7.1f} samples/s total; per worker "
                          f"{clips / workers:7.1f} clips/s {samples / workers:7.1f} samples/s")
                print(f"  {size:4d} px, {workers} worker(s): the cache {rates[1] / rates[0]:.1f}x")


if __name__ == "__main__":
    main()
