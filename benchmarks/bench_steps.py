"""Few-step sampling: SynthEmo quality against sampler and step count, in one ``moee test`` table.

Scores one trained model (default: the quickstart's, ``runs/tiny/weights``) on held-out
SynthEmo identities with every sampler (DPM-Solver++ 2M, DDIM, Euler) at 4, 8, 15, 25 and 40
steps — one row per setting (:class:`~moee.evaluation.lightning.ModelEntry` ``sampler``), each
with the tiny preset's guidance (``PRESET_SAMPLING["tiny"]``: audio and emotion guidance 3.5,
compounds composed), the ground truth as the metrics' floor — and prints, per sampler, how
far 8 steps are from 40 in probe emotion accuracy, FVD (probe features) and lip sync. The
design's goal: 8 steps within 5 % of 40. Needs the SynthEmo probes (``python -m moee synth
probes --size 64``).

    python benchmarks/bench_steps.py [--weights runs/tiny/weights] [--batches 2] [--strength 1]
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
from jsonargparse import CLI  # noqa: E402

from moee.data.datamodule import MoEEDataModule  # noqa: E402
from moee.data.sampling import SamplingOptions  # noqa: E402
from moee.evaluation.lightning import EvaluationModule, ModelEntry  # noqa: E402
from moee.evaluation.synthemo import SynthEmoMetrics  # noqa: E402
from moee.inference.animate import stage_weights  # noqa: E402
from moee.inference.sampling import PRESET_SAMPLING  # noqa: E402
from moee.models.moee_net import MoEENetConfig  # noqa: E402

SAMPLERS = ("dpmpp", "ddim", "euler")
STEPS = (4, 8, 15, 25, 40)
COMPARED = {"Emotion-Acc": "higher", "FVD": "lower", "Sync-C": "higher", "Sync-D": "lower"}


def relative_gap(few: float, many: float) -> float:
    """|few − many| / |many| (0 when both are 0)."""
    return abs(few - many) / abs(many) if many else float(few != 0)


def main(weights: str = "runs/tiny/weights", test: str = "runs/synthemo/test",
         batches: int = 2, frames: int = 16, strength: float = 1.0,
         out: str = "runs/bench_steps") -> None:
    """Print the quality table and the 8-vs-40-step gaps.

    Args:
        weights: folder of the tiny model's stage exports.
        test: SynthEmo test shards.
        batches: test batches of 4 clips each.
        frames: frames scored per clip (chained 8-frame clips).
        strength: where sampling starts (``SamplerSettings.strength``; 1: pure noise).
        out: where ``moee test`` writes its table and logs.
    """
    preset = PRESET_SAMPLING["tiny"]
    rows = [ModelEntry(f"{sampler} {steps}", stage_weights([weights]),
                       sampler=replace(preset, sampler=sampler, steps=steps, strength=strength))
            for sampler in SAMPLERS for steps in STEPS]
    rows.append(ModelEntry("Ground truth", source="ground_truth"))
    module = EvaluationModule(
        models=rows, metrics=SynthEmoMetrics(fvd_frames=8, sync_max_offset=5),
        net=MoEENetConfig(preset="tiny"),
        output_dir=out, table="steps")
    data = MoEEDataModule(test=test, val_batch_size=4, num_workers=1,
                          sampling=SamplingOptions(num_frames=frames))
    trainer = L.Trainer(accelerator="cpu", devices=1, limit_test_batches=batches, logger=False,
                        default_root_dir=out, enable_checkpointing=False)
    trainer.test(module, datamodule=data)
    table = json.loads(open(os.path.join(out, "steps.json")).read())
    print(open(os.path.join(out, "steps.md")).read())
    results = {row["model"]: row for row in table["rows"]}
    for sampler in SAMPLERS:
        few, many = results[f"{sampler} 8"], results[f"{sampler} 40"]
        gaps = ", ".join(f"{column} {relative_gap(few[column], many[column]):.1%}"
                         for column in COMPARED)
        print(f"{sampler}: 8 vs 40 steps — {gaps} (goal: each ≤ 5 %)")


if __name__ == "__main__":
    CLI(main)
