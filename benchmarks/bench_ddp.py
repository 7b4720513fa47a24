"""DDP scaling on CPU: training samples/s of the tiny backbone with 1 and 2 processes (gloo).

Writes procedural 32 px shards (tests/clips.py), then runs the tiny video backbone stage
(``configs/tiny/backbone.yaml``'s model, random weights) through ``Trainer.fit`` with 1 process
and with ``strategy=ddp`` on 2 processes, each with the same per-process batch, and times the
steps after ``--warmup`` (samples/s counts the samples of all processes). Prints both and the
ratio. Each process uses ``--threads`` intra-op threads: on a 2-core machine, 1 thread per
process is the fair comparison (2 processes × 1 thread vs 1 process × 1 thread).

    python benchmarks/bench_ddp.py [--steps 12] [--warmup 3] [--batch_size 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from clips import write_test_shards
from lightning.pytorch.strategies import DDPStrategy

from moee.data.datamodule import MoEEDataModule
from moee.data.sampling import SamplingOptions
from moee.stages import BackboneModule
from moee.stages.losses import MoEELoss


class StepTimer(L.Callback):
    """Wall time of the training steps after the first ``warmup`` (rank 0 writes it)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.timed = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            trainer.strategy.barrier()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup:
            self.timed = trainer.global_step - self.warmup


def worker(args: argparse.Namespace) -> None:
    """Train ``warmup + steps`` steps with ``args.devices`` processes; print the JSON result."""
    torch.set_num_threads(args.threads)
    L.seed_everything(0)
    model = BackboneModule(loss=MoEELoss(pixel_weight=0.1, perceptual_weights="random",
                                         perceptual_depth=2))
    data = MoEEDataModule(train=args.shards, batch_size=args.batch_size, num_workers=1,
                          sampling=SamplingOptions(num_frames=4, windows_per_clip=2),
                          samples_per_epoch=10_000, shuffle_buffer=8)
    timer = StepTimer(args.warmup)
    strategy = DDPStrategy(find_unused_parameters=True) if args.devices > 1 else "auto"
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy,
                        max_steps=args.warmup + args.steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[timer])
    trainer.fit(model, datamodule=data)
    trainer.strategy.barrier()
    seconds = time.perf_counter() - timer.start
    if trainer.is_global_zero:
        samples = timer.timed * args.batch_size * args.devices
        print(json.dumps({"devices": args.devices, "steps": timer.timed,
                          "samples_per_s": samples / seconds}))


def measure(devices: int, shards: str, args: argparse.Namespace) -> dict:
    """Run :func:`worker` with ``devices`` processes in a fresh interpreter."""
    command = [sys.executable, __file__, "--worker", "--devices", str(devices), "--shards",
               shards, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch_size", str(args.batch_size), "--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{devices}-process run failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    """Measure 1 and 2 processes and print samples/s and the speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        shards = str(write_test_shards(Path(tmp) / "shards", identities=4, num_frames=24,
                                       size=32))
        one, two = measure(1, shards, args), measure(2, shards, args)
    print(f"tiny backbone, 32 px, 4 frames, batch {args.batch_size} per process, "
          f"{args.threads} thread(s) per process, {args.steps} timed steps")
    print(f"1 process : {one['samples_per_s']:.2f} samples/s")
    print(f"2 processes (DDP, gloo): {two['samples_per_s']:.2f} samples/s")
    print(f"speed-up 1 -> 2: {two['samples_per_s'] / one['samples_per_s']:.2f}x")


if __name__ == "__main__":
    main()
