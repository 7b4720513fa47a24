"""One training stage's step: float32 vs bf16 autocast, default vs channels-last convolutions.

Builds the stage of a config as ``python -m moee fit`` does (``MoEECLI``), draws a few batches
from its data once, and times the same optimisation step (forward, loss, backward, AdamW) on
them, side by side in one run, for each variant:

* ``fp32``: float32 throughout (``precision: 32-true``, the CPU configs' default);
* ``bf16``: bf16 autocast over float32 weights (``precision: bf16-mixed``): on CPUs with
  AMX or AVX512-BF16, oneDNN's bf16 convolutions and matrix products;
* ``+cl``: the network's convolutions channels-last (``net.channels_last``).

Prints the median seconds per step and each variant's ratio to the first. Defaults to the
tiny image stage, four fifths of the quickstart's time. Needs SynthEmo shards where the config
points (``python -m moee quickstart`` writes them).

    python benchmarks/bench_stage_step.py [--stage configs/tiny/backbone_image.yaml] [--steps 6]
"""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from jsonargparse import CLI  # noqa: E402
from timing import median_time  # noqa: E402

from moee.cli import MoEECLI  # noqa: E402

VARIANTS = ("fp32", "bf16", "fp32+cl", "bf16+cl")


def stage_step(config: str, variant: str, batches: list | None):
    """(step function, the batches it cycles through) for ``variant`` of the stage of
    ``config``."""
    cli = MoEECLI(run=False, args=[
        "--config", config, "--model.init_args.export_path", "null",
        "--model.init_args.net.channels_last", str(variant.endswith("+cl")).lower(),
        "--trainer.logger", "false"])
    module, data = cli.model, cli.datamodule
    if batches is None:
        data.setup("fit")
        loader = iter(data.train_dataloader())
        batches = [data.on_after_batch_transfer(next(loader), 0) for _ in range(3)]
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    turn = iter(range(1 << 30))

    def precision():
        if variant.startswith("bf16"):
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with precision():
            total = module.diffusion_step(batches[next(turn) % len(batches)])["total"]
        total.backward()
        optimizer.step()

    return step, batches


def main(stage: str = "configs/tiny/backbone_image.yaml", steps: int = 6,
         variants: tuple[str, ...] = VARIANTS, threads: int | None = None) -> None:
    """Print seconds per training step of each variant, and its ratio to the first.

    Args:
        stage: a stage config (``python -m moee fit --config`` takes the same).
        steps: timed steps per variant (median reported), after one warm-up step.
        variants: which of fp32, bf16, fp32+cl, bf16+cl.
        threads: torch intra-op threads (default: torch's own choice).
    """
    if threads:
        torch.set_num_threads(threads)
    batches, seconds = None, {}
    for variant in variants:
        torch.manual_seed(0)
        step, batches = stage_step(stage, variant, batches)
        seconds[variant] = median_time(step, steps)
        print(f"{variant:8} {seconds[variant]:.2f} s/step  "
              f"{seconds[variant] / seconds[variants[0]]:.2f}x", flush=True)
    print(f"({stage}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    CLI(main)
