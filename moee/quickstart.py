"""``python -m moee quickstart``: the whole system on SynthEmo, on a CPU, with no downloads.

It generates SynthEmo shards, trains the three stages of the tiny model (backbone, the six
experts, the gates) with the configs in ``configs/tiny/``, and animates held-out SynthEmo
portraits with a basic, a compound, a text and an audio-only emotion. Everything goes under
``runs/`` of the current folder (the repository root, where the configs' relative paths
point); finished steps are skipped on a rerun.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from jsonargparse import CLI

from moee.emotions import BASIC_EMOTIONS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUNS = Path("runs")
SYNTHEMO = RUNS / "synthemo"
WEIGHTS = RUNS / "tiny" / "weights"

STAGES: tuple[tuple[str, str], ...] = (
    ("backbone", "tiny/backbone.yaml"),
    *((f"expert_{e}", f"tiny/expert_{e}.yaml") for e in BASIC_EMOTIONS),
    ("gating", "tiny/gating.yaml"),
)
"""(exported weights name, config) of every training stage, in order."""


def _timed(timings: dict[str, float], name: str, step: Callable[[], object]) -> None:
    start = time.perf_counter()
    step()
    timings[name] = round(time.perf_counter() - start, 1)
    print(f"[quickstart] {name}: {timings[name]:.0f} s", flush=True)


def quickstart(identities: int = 40, frames: int = 50, backbone_steps: int | None = None,
               expert_steps: int | None = None, gating_steps: int | None = None,
               workers: int = 2, force: bool = False) -> dict[str, float]:
    """Generate SynthEmo, train every stage of the tiny model, and animate test portraits.

    Args:
        identities: SynthEmo training identities (validation and test get a fifth each).
        frames: frames per SynthEmo clip.
        backbone_steps, expert_steps, gating_steps: override the configs' ``max_steps``.
        workers: processes for data generation.
        force: redo steps whose outputs exist.

    Returns:
        Wall time in seconds per step.
    """
    from moee.cli import main as moee

    timings: dict[str, float] = {}
    if force or not (SYNTHEMO / "test" / "manifest.json").is_file():
        held_out = max(2, identities // 5)
        _timed(timings, "synthemo", lambda: moee([
            "synth", "--out", str(SYNTHEMO), "--train", str(identities), "--val", str(held_out),
            "--test", str(held_out), "--frames", str(frames), "--workers", str(workers)]))
    overrides = {"backbone": backbone_steps, "gating": gating_steps}
    for name, config in STAGES:
        if not force and (WEIGHTS / f"{name}.safetensors").is_file():
            print(f"[quickstart] {name}: already trained ({WEIGHTS / name}.safetensors)")
            continue
        steps = overrides.get(name, expert_steps)
        extra = ["--trainer.max_steps", str(steps)] if steps else []
        _timed(timings, name, lambda c=config, e=extra: moee(
            ["fit", "--config", str(CONFIGS / c), *e]))
    (RUNS / "tiny").mkdir(parents=True, exist_ok=True)
    (RUNS / "tiny" / "timings.json").write_text(json.dumps(timings, indent=2))
    print(f"[quickstart] weights: {WEIGHTS}/  logs: tensorboard --logdir {RUNS / 'tiny'}")
    return timings


def main(argv: list[str]) -> None:
    """``python -m moee quickstart [--identities N] ...``"""
    CLI(quickstart, args=argv, prog="moee quickstart")
