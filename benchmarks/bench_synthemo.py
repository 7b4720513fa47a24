"""Table 5 on SynthEmo: the tiny MoEE and its ablations, each trained by the quickstart's recipe.

    python benchmarks/bench_synthemo.py [--out runs/table5] [--full runs/tiny/weights]
                                        [--budget small] [--seed N]
    python benchmarks/bench_synthemo.py --seeds runs/table5_s0 runs/table5_s1 runs/table5_s2

Every variant trains every stage of the tiny recipe (``configs/tiny/``, as ``python -m moee
quickstart`` runs them: image-mode backbone, video backbone, the six experts, the gates) with
the same steps, data, seed and precision, and differs only where the paper's ablation does:

==================  =========================================================================
variant             what changes, in every stage that has it
==================  =========================================================================
MoEE (full)         nothing: the quickstart's recipe
w/o MoE             one cross-attention instead of six experts (``net.num_experts: 1``): it
                    warms up on every clip in the backbone stages and trains on every emotion
                    in the expert stage (the stage's steps and batches unchanged)
w/o global gate     the full model's backbone and experts; gates with local gates only
                    (``net.global_gate: false``: the six experts at equal weights)
w/o MNS             no masked noisy emotion sampling (``sampling.mns_prob: 0``): the reference
                    and motion frames always come from the clip itself
==================  =========================================================================

The speech-emotion stand-in does not depend on any of these and is trained once. Then
``python -m moee test`` (``configs/tiny/test.yaml``: held-out identities from pure noise, the
quickstart's sampling) scores every variant and the ground truth with the SynthEmo probes,
twice: each clip under its label (``table5.json``), and under its text description
(``table5_text.json``), which reaches the experts through the emotion-to-latents path and the
gates where a label goes to its expert directly (so w/o global gate differs from the full
model only there); the script prints both tables and which of the paper's orderings hold.
``moee test`` animates each test clip from one of its own frames; the animations MNS trains
for start from a portrait that shows none of the asked emotion, so every variant is also read
as the quickstart reads its own model: from every test identity's neutral portrait, from pure
noise, each basic label, and on four of them each compound, text description and the speech's
tone (emotion per kind, identity, lip sync; written to ``neutral_portraits.json``, and a
contact sheet of two identities' basic and compound videos per variant to
``neutral_portraits.png``).
``--full`` reuses the full model's weights from a quickstart run with the same settings (its
``runs/tiny/weights``).
``--budget`` trains every variant for a quickstart budget's steps (``moee.quickstart.BUDGETS``:
``small`` is the longer one), ``--seed`` sets every stage's seed; ``--scale`` multiplies every
stage's steps (``--scale
0.01 --test-batches 1`` is a smoke run of the whole path). Finished stages are skipped on a
rerun of the same ``--out``. Needs the quickstart's SynthEmo (``runs/synthemo``) and probes.

``--seeds`` reads finished runs (one ``--out`` per seed) and prints the tables as mean ±
standard deviation over the seeds (the text-conditioned one over the runs that have it), and
at how many seeds the full model is ahead of each ablation in each column: an ordering that
holds at every seed is a result, one that flips is noise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from moee.cli import main as moee
from moee.emotions import BASIC_EMOTIONS
from moee.errors import BadInputError
from moee.metrics.tables import COLUMNS, format_value, markdown_grid, markdown_table, wins_of
from moee.quickstart import BUDGETS, CONFIGS, animate_held_out, read_stamps, training_precision
from moee.showcase import KINDS

FULL, NO_MOE, NO_GLOBAL, NO_MNS = "MoEE (full)", "w/o MoE", "w/o global gate", "w/o MNS"
EXPERTS = [f"expert_{e}.safetensors" for e in BASIC_EMOTIONS]
REUSED = {"shared": ["speech_emotion.safetensors"],
          FULL: ["backbone_image.safetensors", "backbone.safetensors", *EXPERTS,
                 "gating.safetensors"]}
"""What ``--full`` takes from a quickstart's weights folder, by the variant it stands for."""
TABLE5 = CONFIGS / "tiny" / "ablations" / "common" / "table5.yaml"
"""The ``moee test`` overlay that names every variant's weights under ``runs/table5``."""
TABLES = {"label": "table5", "text": "table5_text"}
"""The ``moee test`` table of each conditioning of the test clips, by its file name."""


def recipe(stage: str) -> dict:
    """The ``configs/tiny/`` config of a stage (its ``max_steps``, unless the budget sets
    them, and the gating stage's ``alignment_warmup`` are what ``--scale`` multiplies)."""
    return yaml.safe_load((CONFIGS / "tiny" / f"{stage}.yaml").read_text())


class Bench:
    """Runs the stages of every variant into ``out`` and records their wall times."""

    def __init__(self, out: Path, data: Path, scale: float, seed: int, precision: str,
                 budget: str = "tiny") -> None:
        self.out, self.data, self.scale, self.precision = out, data, scale, precision
        self.seed, self.budget = seed, budget
        self.common = ["--seed_everything", str(seed), "--trainer.precision", precision,
                       "--trainer.enable_progress_bar", "false",
                       "--trainer.limit_val_batches", "0",
                       *(f"--data.init_args.{split}={data / split}"
                         for split in ("train", "val"))]
        self.timings: dict[str, float] = {}

    def weights(self, variant: str) -> Path:
        """The folder of one variant's exports."""
        return self.out / variant_folder(variant) / "weights"

    def fit(self, variant: str, stage: str, init: list[Path], export: str,
            *overrides: str) -> Path:
        """``moee fit`` one stage of the tiny recipe for ``variant``, unless its export exists;
        returns the export (``export`` may hold ``{emotion}``)."""
        folder = self.weights(variant)
        path = folder / export
        done = Path(str(path).replace("{emotion}", BASIC_EMOTIONS[-1]))
        name = f"{variant_folder(variant)}/{stage}"
        if done.exists():
            print(f"[bench] {name}: done before ({done})", flush=True)
            return path
        budget = BUDGETS[self.budget].get(stage) or recipe(stage)["trainer"]["max_steps"]
        steps = max(1, round(budget * self.scale))
        argv = ["fit", "--config", str(CONFIGS / "tiny" / f"{stage}.yaml"), *self.common,
                "--trainer.max_steps", str(steps),
                "--trainer.default_root_dir", str(self.out / variant_folder(variant) / stage),
                "--model.init_args.export_path", str(path), *overrides]
        if init:
            argv += [f"--model.init_args.init_weights=[{','.join(map(str, init))}]"]
        if stage == "gating" and self.scale < 1:
            warmup = recipe(stage)["model"]["init_args"]["alignment_warmup"]
            argv += ["--model.init_args.alignment_warmup", str(round(warmup * self.scale))]
        start = time.perf_counter()
        moee(argv)
        self.timings[name] = round(time.perf_counter() - start, 1)
        print(f"[bench] {name}: {self.timings[name]:.0f} s", flush=True)
        return path

    def train(self, variant: str, speech: Path, net: list[str], data: list[str],
              backbone_and_experts: list[Path] | None = None) -> list[Path]:
        """Every stage of one variant (the backbone and experts given: the gates alone);
        returns the weights to load, in order."""
        if backbone_and_experts is None:
            image = self.fit(variant, "backbone_image", [], "backbone_image.safetensors",
                             *net, *data)
            backbone = self.fit(variant, "backbone", [image], "backbone.safetensors",
                                *net, *data)
            if NO_MOE == variant:  # the one attention learns every emotion: expert_0's group
                experts = [self.fit(variant, "experts", [backbone], "attention.safetensors",
                                    "--model.init_args.emotion", "angry", *net, *data)]
            else:
                self.fit(variant, "experts", [backbone], "expert_{emotion}.safetensors",
                         *net, *data)
                experts = [self.weights(variant) / e for e in EXPERTS]
            backbone_and_experts = [backbone, *experts]
        gates = self.fit(variant, "gating", [*backbone_and_experts, speech],
                         "gating.safetensors", *net, *data)
        return [*backbone_and_experts, gates]

    def run(self, full: Path | None) -> None:
        """Train (or find) every variant, into the folders the Table 5 overlay reads."""
        if full is not None:  # a quickstart's exports, trained by the same recipe
            reused = {name: variant for variant, names in REUSED.items() for name in names}
            missing = [name for name in reused if not (full / name).is_file()]
            if missing:
                sys.exit(f"error: --full {full} lacks {', '.join(missing)}: pass the weights "
                         f"folder of a finished quickstart (runs/tiny/weights)")
            self.check_full(full)
            for name, variant in reused.items():
                target = self.weights(variant) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    shutil.copy(full / name, target)
        speech = self.fit("shared", "speech_emotion", [], "speech_emotion.safetensors")
        full_model = self.train(FULL, speech, [], [])
        self.train(NO_GLOBAL, speech, ["--model.init_args.net.global_gate", "false"], [],
                   backbone_and_experts=full_model[:-1])
        self.train(NO_MNS, speech, [], ["--data.init_args.sampling.mns_prob", "0"])
        self.train(NO_MOE, speech, ["--model.init_args.net.num_experts", "1"], [])

    def check_full(self, full: Path) -> None:
        """Refuse a quickstart's weights trained at another seed or budget than this bench's
        or export layout (its ``stages.json``)."""
        try:
            stamps = read_stamps(full)
        except BadInputError as error:
            sys.exit(f"error: --full {error}")
        for stage, stamp in stamps.items():
            steps = BUDGETS[self.budget].get(stage)
            if self.scale != 1 or stamp["seed"] != self.seed or stamp["max_steps"] != steps:
                trained = f"seed {stamp['seed']}, max_steps {stamp['max_steps'] or 'as config'}"
                sys.exit(f"error: --full {full} holds a {stage} stage of {trained}; this bench "
                         f"trains seed {self.seed}, budget {self.budget} x {self.scale}")

    def evaluate(self, test_batches: int | None) -> dict[str, dict]:
        """``moee test`` of every variant and the ground truth, with the Table 5 overlay
        (``configs/tiny/ablations/common/table5.yaml``) read from ``out``, once per
        conditioning of the test clips (:data:`TABLES`); returns conditioning → model →
        columns."""
        overlay = yaml.safe_load(TABLE5.read_text().replace("runs/table5", str(self.out)))
        overlay["trainer"] = {"enable_progress_bar": False}
        if test_batches:
            overlay["trainer"]["limit_test_batches"] = test_batches
        overlay["data"] = {"init_args": {"test": str(self.data / "test")}}
        results = {}
        for conditioning, table in TABLES.items():
            overlay["trainer"]["default_root_dir"] = str(self.out / "test" / conditioning)
            init = overlay["model"]["init_args"]
            init["table"] = table
            for row in init["models"]:
                if "weights" in row:
                    row.update(source="model", conditioning=conditioning)
            path = self.out / f"{table}_overlay.yaml"
            path.write_text(yaml.safe_dump(overlay))
            start = time.perf_counter()
            moee(["test", "--config", str(CONFIGS / "tiny" / "test.yaml"), "--config",
                  str(path)])
            self.timings[f"evaluation, {conditioning}"] = round(time.perf_counter() - start, 1)
            results[conditioning] = test_table(self.out, table)
        return results

    def neutral_portraits(self) -> dict[str, dict]:
        """Every variant's quickstart reading (:func:`~moee.quickstart.animate_held_out` on
        the test identities' neutral portraits, from pure noise, every condition kind on four
        of them, sampled in the training precision): model → its ``ShowcaseScores``."""
        import torch

        from moee.data.synth.sheet import with_header, write_png
        from moee.evaluation.probe_judge import ProbeJudge
        from moee.evaluation.probes import load_probes
        from moee.showcase import SHEET_LABELS, score_videos, showcase_sheet

        probes = load_probes()
        overlay = yaml.safe_load((self.out / f"{TABLES['label']}_overlay.yaml").read_text())
        dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float32
        start, readings, sheets = time.perf_counter(), {}, []
        for model in overlay["model"]["init_args"]["models"]:
            if "weights" not in model:  # the ground truth
                continue
            made = animate_held_out(people=4, dtype=dtype, weights=model["weights"],
                                    net=model.get("net"), data=self.data, out=None)
            portraits = {video.person.identity: video.person.portrait for video, _ in made}
            readings[model["name"]] = score_videos(ProbeJudge(probes, portraits), made)
            sheets.append(showcase_sheet(made, identities=2, frames=1))
            print(f"[bench] {model['name']}, neutral portraits: "
                  + "; ".join(readings[model["name"]].lines()), flush=True)
        self.timings["neutral_portraits"] = round(time.perf_counter() - start, 1)
        (self.out / "neutral_portraits.json").write_text(json.dumps(
            {name: scores.as_dict() for name, scores in readings.items()}, indent=2))
        # one column block per variant, headed by its name (in two lines), one label column
        videos = with_header(np.concatenate([sheet[:, SHEET_LABELS:] for sheet in sheets], 1),
                             [name.replace("w/o ", "w/o-") for name in readings],
                             sheets[0].shape[1] - SHEET_LABELS)
        labels = np.pad(sheets[0][:, :SHEET_LABELS],
                        ((videos.shape[0] - len(sheets[0]), 0), (0, 0), (0, 0)),
                        constant_values=255)
        write_png(self.out / "neutral_portraits.png", np.concatenate([labels, videos], 1))
        return readings


NEUTRAL_COLUMNS = {**{kind: True for kind in KINDS}, "identity": True, "lip sync r": True}
"""The neutral-portrait reading's columns (``neutral_portraits.json``): higher is better."""


def neutral_row(scores: dict) -> dict[str, float]:
    """One variant's neutral-portrait reading as columns: each kind's share read as asked,
    the share of videos of the right person, lip sync r."""
    return {**scores["emotion_accuracy"], "identity": scores["identity_accuracy"],
            "lip sync r": scores["lip_sync_r"]}


def test_table(run: Path, table: str = TABLES["label"]) -> dict[str, dict[str, float]]:
    """A finished run's ``moee test`` table (``<table>.json``): model → its columns."""
    rows = json.loads((run / f"{table}.json").read_text())["rows"]
    return {row["model"]: {c: row[c] for c in COLUMNS if c in row} for row in rows}


def neutral_table(run: Path) -> dict[str, dict[str, float]]:
    """A finished run's neutral-portrait reading (``neutral_portraits.json``): model → its
    columns (:func:`neutral_row`)."""
    scores = json.loads((run / "neutral_portraits.json").read_text())
    return {name: neutral_row(reading) for name, reading in scores.items()}


def seed_summary(runs: list[Path]) -> str:
    """The tables of finished runs (one ``--out`` per seed; the text-conditioned ``moee
    test`` over the runs that have it) as mean ± standard deviation over the runs, and, per
    ablation and column, at how many runs the full model is ahead (strictly better; ties
    count for neither), in Markdown."""
    text = []
    texts = [run for run in runs if (run / f"{TABLES['text']}.json").is_file()]
    for title, tables, better in (
            ("moee test", [test_table(run) for run in runs], COLUMNS),
            ("moee test, each clip under its description",
             [test_table(run, TABLES["text"]) for run in texts], COLUMNS),
            ("from neutral portraits", [neutral_table(run) for run in runs], NEUTRAL_COLUMNS)):
        if not tables:
            continue
        columns = [c for c in better if c in tables[0][FULL]]
        cells = [[name, *(mean_sd([table[name][c] for table in tables], c) for c in columns)]
                 for name in tables[0]]
        header = [f"{c} {'↑' if better[c] else '↓'}" for c in columns]
        text.append(f"### Table 5, {title}: mean ± sd over {len(tables)} seeds\n\n"
                    + markdown_grid(["Method", *header], cells, right_from=1))
        ahead = [[name, *(f"{sum(ahead_of(t[FULL][c], t[name][c], better[c]) for t in tables)}"
                          f"/{len(tables)}" for c in columns)]
                 for name in tables[0] if name not in (FULL, "Ground truth")]
        text.append(f"Seeds at which the full model is ahead ({title}):\n\n"
                    + markdown_grid(["Ablation", *header], ahead, right_from=1))
    return "\n".join(text)


def seed_summary_of(outs: list[str]) -> str:
    """:func:`seed_summary` of the ``--seeds`` folders, or exit with one line naming a folder
    that is not a finished run of the same variants as the first."""
    runs = [Path(out) for out in outs]
    variants = [variants_of(run) for run in runs]
    for run, found in zip(runs, variants):
        if found != variants[0] or FULL not in found[1]:
            sys.exit(f"error: --seeds {run}: its variants differ from {runs[0]}'s (or lack "
                     f"{FULL!r}); summarise runs of the same bench")
    return seed_summary(runs)


def variants_of(run: Path) -> list[set[str]]:
    """The model names of a finished run's two tables, or exit with one line (also when its
    text-conditioned table, where it has one, is damaged or scores other models)."""
    try:
        names = [set(test_table(run)), set(neutral_table(run))]
        if (run / f"{TABLES['text']}.json").is_file() and \
                set(test_table(run, TABLES["text"])) != names[0]:
            raise ValueError(f"{TABLES['text']}.json scores other models than table5.json")
        return names
    except (OSError, ValueError, KeyError, TypeError) as error:
        sys.exit(f"error: --seeds {run}: not a finished run ({error!r} reading its tables: "
                 "table5.json, neutral_portraits.json and any table5_text.json); rerun "
                 "bench_synthemo.py with that --out")


def mean_sd(values: list[float], column: str) -> str:
    """``mean ± sd`` of one cell over the seeds (sample sd; the mean alone for one seed),
    shares of the neutral-portrait reading in per cent."""
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else None
    if column in KINDS or column == "identity":
        return f"{100 * mean:.0f} %" + (f" ± {100 * sd:.0f}" if sd is not None else "")
    return format_value(column, mean) + (f" ± {format_value(column, sd)}" if sd is not None
                                         else "")


def ahead_of(full: float, other: float, higher_better: bool) -> bool:
    """Whether the full model's value is strictly better than ``other``'s."""
    return full > other if higher_better else full < other


def variant_folder(variant: str) -> str:
    """A variant's folder name: ``MoEE (full)`` → ``full``, ``w/o MoE`` → ``no_moe``."""
    if variant == FULL:
        return "full"
    return variant.replace("w/o ", "no_").replace(" ", "_").lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/table5")
    parser.add_argument("--data", default="runs/synthemo", help="the quickstart's SynthEmo")
    parser.add_argument("--full", help="reuse the full model's exports from this folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", default="tiny", choices=sorted(BUDGETS),
                        help="the quickstart budget of every variant's steps")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every step count")
    parser.add_argument("--precision", default="auto",
                        choices=["auto", "32-true", "bf16-mixed"], help="as the quickstart's")
    parser.add_argument("--test-batches", type=int, help="test batches of 4 clips (default: "
                        "configs/tiny/test.yaml's)")
    parser.add_argument("--seeds", nargs="+", metavar="OUT", help="only summarise finished "
                        "runs (one --out per seed): mean ± sd, and where the full model leads")
    args = parser.parse_args()
    if args.seeds:
        print(seed_summary_of(args.seeds))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    precision = training_precision(args.precision)
    bench = Bench(Path(args.out), Path(args.data), args.scale, args.seed, precision,
                  args.budget)
    print(f"[bench] the tiny recipe, budget {args.budget} x {args.scale} per variant, "
          f"seed {args.seed}, "
          f"{precision}; data {args.data}", flush=True)
    start = time.perf_counter()
    bench.run(Path(args.full) if args.full else None)
    tables = bench.evaluate(args.test_batches)
    readings = bench.neutral_portraits()
    total = time.perf_counter() - start
    results = tables["label"]
    print(markdown_table(results, "SynthEmo ablations (paper Table 5)",
                         exclude=["Ground truth"]))
    print(markdown_table(tables["text"], "The same, each test clip under its text description",
                         exclude=["Ground truth"]))
    wins = wins_of(results, FULL, exclude=["Ground truth"])
    print(f"[bench] full model best in {sum(wins.values())}/{len(wins)} columns: "
          + ", ".join(f"{c} {'yes' if won else 'no'}" for c, won in wins.items()))
    worst_akd = max((r for r in results if r != "Ground truth"),
                    key=lambda r: results[r].get("AKD", float("-inf")))
    print(f"[bench] worst AKD: {worst_akd} (the paper: w/o MoE, 14.96 vs 4.03)")
    print("[bench] from neutral portraits, emotion read as asked per kind, identity, lip sync:")
    for name, scores in readings.items():
        print(f"[bench]   {name}: " + ", ".join(
            f"{kind} {right}/{videos}" for kind, (right, videos) in scores.emotion.items())
            + f"; identity {scores.identity[0]}/{scores.identity[1]}; r {scores.lip_sync:.2f}")
    print(f"[bench] stage times (s): {json.dumps(bench.timings)}; total {total / 60:.1f} min")
    missing = set(COLUMNS) - set(wins)
    if missing:
        print(f"[bench] columns without a value: {sorted(missing)}")


if __name__ == "__main__":
    main()
