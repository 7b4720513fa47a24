"""One training stage's step, the network's convolutions in the default layout vs channels-last.

Builds the stage of a config as ``python -m moee fit`` does (``MoEECLI``), draws a few batches
from its data once, and times the same optimisation step (forward, loss, backward, AdamW) on
them, side by side in one run: ``net.channels_last`` off, then on. Prints the median seconds
per step and the ratio. Defaults to the tiny image stage, four fifths of the quickstart's time.
Needs SynthEmo shards where the config points (``python -m moee quickstart`` writes them).

    python benchmarks/bench_stage_step.py [--stage configs/tiny/backbone_image.yaml] [--steps 6]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from jsonargparse import CLI  # noqa: E402
from timing import median_time  # noqa: E402

from moee.cli import MoEECLI  # noqa: E402


def stage_step(config: str, channels_last: bool, batches: list | None):
    """(step function, the batches it cycles through, the stage) for the stage of ``config``."""
    cli = MoEECLI(run=False, args=[
        "--config", config, "--model.init_args.export_path", "null",
        "--model.init_args.net.channels_last", str(channels_last).lower(),
        "--trainer.logger", "false"])
    module, data = cli.model, cli.datamodule
    if batches is None:
        data.setup("fit")
        loader = iter(data.train_dataloader())
        batches = [data.on_after_batch_transfer(next(loader), 0) for _ in range(3)]
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    turn = iter(range(1 << 30))

    def step():
        optimizer.zero_grad(set_to_none=True)
        module.diffusion_step(batches[next(turn) % len(batches)])["total"].backward()
        optimizer.step()

    return step, batches, module


def main(stage: str = "configs/tiny/backbone_image.yaml", steps: int = 6,
         threads: int | None = None) -> None:
    """Print seconds per training step with and without channels-last convolutions.

    Args:
        stage: a stage config (``python -m moee fit --config`` takes the same).
        steps: timed steps per variant (median reported), after one warm-up step.
        threads: torch intra-op threads (default: torch's own choice).
    """
    if threads:
        torch.set_num_threads(threads)
    batches, seconds = None, {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        step, batches, _ = stage_step(stage, channels_last, batches)
        seconds[channels_last] = median_time(step, steps)
        print(f"channels_last={channels_last!s:5}  {seconds[channels_last]:.2f} s/step",
              flush=True)
    print(f"channels-last / default: {seconds[True] / seconds[False]:.2f}x "
          f"({stage}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    CLI(main)
