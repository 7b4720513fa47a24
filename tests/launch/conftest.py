"""Shared pieces of the launch tests: tiny shards, the arguments of a tiny ``fit``, and the
check that no process a test starts outlives it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clips import write_test_shards
from tests.processes import (
    TOKEN_VARIABLE,
    describe,
    kill_and_wait,
    new_token,
    processes_with_env,
    run_to_end,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_process_outlives_the_test(monkeypatch):
    """Mark every process the test starts (:mod:`tests.processes`); fail the test if one is
    still alive when it ends (after killing it)."""
    token = new_token()
    monkeypatch.setenv(TOKEN_VARIABLE, token)
    yield
    leftover = processes_with_env(TOKEN_VARIABLE, token)
    if leftover:
        names = describe(leftover)
        kill_and_wait(leftover)
        pytest.fail(f"{len(leftover)} process(es) outlived the test: {names}")


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """Four 32 px shards of 12-frame test clips (happy, sad, compound, neutral × 2 people)."""
    return write_test_shards(tmp_path_factory.mktemp("launch") / "shards", identities=2,
                             num_frames=12, size=32)


TINY_CONFIG = REPO / "configs/tiny/expert_sad.yaml"


def tiny_overrides(shards: Path, max_steps: int = 2) -> dict[str, str]:
    """Overrides of :data:`TINY_CONFIG` for tests: random backbone and VAE, 32 px, 2 frames,
    batch 2, no validation, no export."""
    return {
        "model.init_args.init_weights": "[]",
        "model.init_args.net": '{"preset": "tiny", "weights": {"vae": null}}',
        "model.init_args.export_path": "null",
        "model.init_args.loss.init_args.perceptual_depth": "1",
        "data.init_args.train": str(shards), "data.init_args.val": str(shards),
        "data.init_args.num_workers": "0", "data.init_args.sampling.num_frames": "2",
        "data.init_args.batch_size": "2", "data.init_args.sampling.windows_per_clip": "1",
        "data.init_args.samples_per_epoch": "16", "data.init_args.shuffle_buffer": "4",
        "trainer.max_steps": str(max_steps), "trainer.limit_val_batches": "0",
        "trainer.log_every_n_steps": "1", "trainer.enable_progress_bar": "false",
        "trainer.enable_model_summary": "false",
    }


def tiny_fit_args(shards: Path, root: Path, max_steps: int = 2, *extra: str) -> list[str]:
    """``fit`` of the tiny sad expert (:func:`tiny_overrides`) with a per-step CSV log,
    ``last.ckpt`` and ``metrics.json`` under ``root``."""
    args = ["fit", "--config", str(TINY_CONFIG)]
    for key, value in tiny_overrides(shards, max_steps).items():
        args += [f"--{key}", value]
    return [
        *args, "--trainer.default_root_dir", str(root),
        "--trainer.logger", '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": '
        f'{{"save_dir": "{root}", "name": "csv", "version": 0, "flush_logs_every_n_steps": 1}}}}',
        "--trainer.callbacks+=moee.launch.callbacks.ResumableCheckpoint",
        "--trainer.callbacks+=moee.launch.callbacks.MetricsFile",
        *extra,
    ]


def moee_env() -> dict[str, str]:
    """Environment of a ``python -m moee`` subprocess: offline, 1 thread per process."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}


def run_moee(args: list[str], cwd: Path = REPO, timeout: float = 600,
             **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m moee ARGS`` to completion (with every process it starts); fail the test
    with its output on error."""
    result = run_to_end([sys.executable, "-m", "moee", *args], timeout, cwd=cwd, env=moee_env(),
                        **kwargs)
    assert result.returncode == 0, f"moee {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result
