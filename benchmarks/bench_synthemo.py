"""Table 5 on SynthEmo: the tiny MoEE and its ablations under one CPU budget.

    python benchmarks/bench_synthemo.py [--out runs/bench_synthemo] [--scale 1.0]

Trains, through ``python -m moee fit`` and the tiny configs, one shared VAE (stage 0) and one
shared backbone (stage 1; no emotion: the same for every variant), then the emotion stages of
four variants with the same number of optimiser steps each:

==================  =========================================================================
variant             emotion stages (E steps per expert, G gating steps)
==================  =========================================================================
MoEE (full)         6 experts x E with MNS (``sampling.mns_prob`` 0.8), then gating x G
w/o MoE             one cross-attention (``net.num_experts: 1``) x (6E + G) on every emotion
w/o global gate     the full model's experts, then gating x G with ``net.global_gate: false``
w/o MNS             6 experts x E with ``sampling.mns_prob: 0``, then gating x G
==================  =========================================================================

The one cross-attention of "w/o MoE" is the parameter group ``expert_0``, so ``ExpertModule``
trains it (with one expert the MoE ignores routing). All variants are then scored by
``python -m moee test`` on held-out identities with the SynthEmo probes; the table (and a
ground-truth row) is printed with whether the full model is best in each column, as in the
paper. ``--scale`` multiplies every step count, ``--<stage>-steps`` sets one. Needs the probes
(``python -m moee synth probes --size 64``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import yaml

from moee.cli import main as moee
from moee.emotions import BASIC_EMOTIONS, COMPOUND_EMOTIONS
from moee.metrics.tables import COLUMNS, markdown_table, wins_of

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "tiny"
STEPS = {"image": 120, "backbone": 240, "expert": 16, "gating": 40}
"""Optimiser steps per stage at ``--scale 1``."""
EMOTIONAL = [*BASIC_EMOTIONS, *COMPOUND_EMOTIONS]
FULL, NO_MOE, NO_GLOBAL, NO_MNS = "MoEE (full)", "w/o MoE", "w/o global gate", "w/o MNS"


class Bench:
    """Runs the stages into ``out`` and records their wall times."""

    def __init__(self, out: Path, steps: dict[str, int]) -> None:
        self.out = out
        self.weights = out / "weights"
        self.steps = steps
        self.timings: dict[str, float] = {}
        self.data = out / "synthemo"

    def timed(self, name: str, argv: list[str], done: Path) -> None:
        """Run a CLI command unless its output ``done`` exists; record its time."""
        if done.exists():
            print(f"[bench] {name}: done before ({done})", flush=True)
            return
        start = time.perf_counter()
        moee(argv)
        self.timings[name] = round(time.perf_counter() - start, 1)
        print(f"[bench] {name}: {self.timings[name]:.0f} s", flush=True)

    def fit(self, name: str, config: str, steps: int, *overrides: str) -> Path:
        """``moee fit`` a tiny stage config with this bench's data, VAE and step count."""
        export = self.weights / f"{name}.safetensors"
        argv = ["fit", "--config", str(CONFIGS / config),
                "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
                "--trainer.default_root_dir", str(self.out / "logs" / name),
                "--trainer.enable_progress_bar", "false",
                "--model.init_args.export_path", str(export),
                "--data.init_args.num_workers", "1",
                *(f"--data.init_args.{split}={self.data / split}"
                  for split in ("train", "val", "test")),
                *overrides]
        self.timed(name, argv, export)
        return export

    def run(self, identities: int, frames: int, test_batches: int, sample_steps: int) -> dict:
        """Data, training, evaluation; returns the results table (model → columns)."""
        self.timed("synthemo", ["synth", "--out", str(self.data), "--train", str(identities),
                                "--val", "2", "--test", "6", "--frames", str(frames),
                                "--progress", "false"], self.data / "test" / "manifest.json")
        image = self.fit("backbone_image", "backbone_image.yaml", self.steps["image"])
        backbone = self.fit("backbone", "backbone.yaml", self.steps["backbone"],
                            f"--model.init_args.init_weights=[{image}]")
        experts = {}
        for variant, mns in ((FULL, "0.8"), (NO_MNS, "0.0")):
            tag = "mns" if mns != "0.0" else "nomns"
            experts[variant] = [
                self.fit(f"expert_{e}_{tag}", f"expert_{e}.yaml", self.steps["expert"],
                         f"--model.init_args.init_weights=[{backbone}]",
                         f"--data.init_args.sampling.mns_prob={mns}")
                for e in BASIC_EMOTIONS]
        experts[NO_GLOBAL] = experts[FULL]
        weights = {}
        for variant, net in ((FULL, []), (NO_MNS, []),
                             (NO_GLOBAL, ["--model.init_args.net.global_gate", "false"])):
            init = ",".join(str(p) for p in [backbone, *experts[variant]])
            gating = self.fit(f"gating_{variant}".replace(" ", "_").replace("/", ""),
                              "gating.yaml", self.steps["gating"],
                              f"--model.init_args.init_weights=[{init}]",
                              # every step denoises: its budget is too short for a warm-up
                              "--model.init_args.alignment_warmup", "0", *net)
            weights[variant] = [backbone, *experts[variant], gating]
        single = self.fit(
            "attention_no_moe", "expert_angry.yaml",
            6 * self.steps["expert"] + self.steps["gating"],
            f"--model.init_args.init_weights=[{backbone}]",
            "--model.init_args.net.num_experts", "1",
            f"--data.init_args.clips.emotions={json.dumps(EMOTIONAL)}")
        weights[NO_MOE] = [backbone, single]
        return self.evaluate(weights, test_batches, sample_steps)

    def evaluate(self, weights: dict[str, list[Path]], test_batches: int,
                 sample_steps: int) -> dict:
        """``moee test`` of every variant (and ground truth); returns model → columns."""
        ablations = {FULL: {}, NO_MOE: {"num_experts": 1}, NO_GLOBAL: {"global_gate": False},
                     NO_MNS: {}}
        models = [{"name": name, "weights": [str(p) for p in weights[name]],
                   "net": {"preset": "tiny", **ablations[name]}}
                  for name in ablations]
        models.append({"name": "Ground truth", "source": "ground_truth"})
        overrides = {
            "trainer": {"default_root_dir": str(self.out / "logs" / "test"),
                        "limit_test_batches": test_batches, "enable_progress_bar": False},
            "model": {"init_args": {
                "models": models, "ablation": True, "table": "table5",
                "output_dir": str(self.out), "sampler": {"steps": sample_steps}}},
            "data": {"init_args": {"test": str(self.data / "test"), "num_workers": 1,
                                   "sampling": {"num_frames": 16}}},
        }
        path = self.out / "test_overrides.yaml"
        path.write_text(yaml.safe_dump(overrides))
        self.timed("evaluation", ["test", "--config", str(CONFIGS / "test.yaml"),
                                  "--config", str(path)], self.out / "table5.json")
        rows = json.loads((self.out / "table5.json").read_text())["rows"]
        return {row.pop("model"): row for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench_synthemo")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every step count")
    for stage, steps in STEPS.items():
        parser.add_argument(f"--{stage}-steps", type=int, help=f"default {steps} x scale")
    parser.add_argument("--identities", type=int, default=24, help="training identities")
    parser.add_argument("--frames", type=int, default=32, help="frames per SynthEmo clip")
    parser.add_argument("--test-batches", type=int, default=6, help="test batches of 4 clips")
    parser.add_argument("--sample-steps", type=int, default=6, help="sampler steps per clip")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    steps = {stage: getattr(args, f"{stage}_steps") or max(1, round(default * args.scale))
             for stage, default in STEPS.items()}
    bench = Bench(Path(args.out), steps)
    s = bench.steps
    emotion_steps = 6 * s["expert"] + s["gating"]
    print(f"[bench] budget: {torch.get_num_threads()} CPU threads; shared "
          f"backbone {s['image']} image + {s['backbone']} video steps; per variant "
          f"{emotion_steps} emotion-stage steps "
          f"(6 experts x {s['expert']} + gating {s['gating']}, or one attention x "
          f"{emotion_steps}); test: {args.test_batches} x 4 held-out clips of 16 frames, "
          f"{args.sample_steps} sampler steps", flush=True)
    start = time.perf_counter()
    results = bench.run(args.identities, args.frames, args.test_batches, args.sample_steps)
    total = time.perf_counter() - start
    print(markdown_table(results, "SynthEmo ablations (paper Table 5)",
                         exclude=["Ground truth"]))
    wins = wins_of(results, FULL, exclude=["Ground truth"])
    print(f"[bench] full model best in {sum(wins.values())}/{len(wins)} columns: "
          + ", ".join(f"{c} {'yes' if won else 'no'}" for c, won in wins.items()))
    print(f"[bench] paper ordering (full best everywhere) holds: {all(wins.values())}")
    print(f"[bench] stage times (s): {json.dumps(bench.timings)}; total {total / 60:.1f} min")
    missing = set(COLUMNS) - set(wins)
    if missing:
        print(f"[bench] columns without a value: {sorted(missing)}")


if __name__ == "__main__":
    main()
