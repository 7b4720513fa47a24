"""Preemption and resume: SIGTERM mid-epoch → last.ckpt → same step, continued data stream."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from moee.data.datamodule import MoEEDataModule
from moee.data.sampling import SamplingOptions
from moee.launch.callbacks import rng_state, set_rng_state

from .conftest import REPO, moee_env, run_moee, tiny_fit_args


def first_batch(data: MoEEDataModule) -> tuple[list[str], list[int]]:
    batch = next(iter(data.train_dataloader()))
    return batch["key"], batch["start_frame"].tolist()


def test_resumed_stream_is_reseeded_from_the_step(shards):
    def data() -> MoEEDataModule:
        return MoEEDataModule(train=str(shards), batch_size=4, num_workers=0,
                              sampling=SamplingOptions(num_frames=2), samples_per_epoch=8,
                              shuffle_buffer=4, seed=7)

    fresh, resumed, again, later = data(), data(), data(), data()
    assert fresh.state_dict() == {"global_step": 0}
    for module, step in ((resumed, 5), (again, 5), (later, 6)):
        module.load_state_dict({"global_step": step})
    assert fresh.stream_seed() == 7
    assert len({m.stream_seed() for m in (fresh, resumed, later)}) == 3
    assert first_batch(resumed) == first_batch(again)  # reproducible for a given step
    assert first_batch(resumed) != first_batch(fresh)  # not the epoch's start again


def test_rng_state_round_trip():
    state = rng_state()
    expected = torch.rand(3), np.random.rand(), random.random()  # noqa: NPY002
    set_rng_state(state)
    torch.testing.assert_close(torch.rand(3), expected[0])
    assert (np.random.rand(), random.random()) == expected[1:]  # noqa: NPY002


def read_log(root) -> dict[int, float]:
    """{global step: train/total} from the run's CSV log."""
    lines = (root / "csv/version_0/metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    step, total = header.index("step"), header.index("train/total")
    return {int(row.split(",")[step]): float(row.split(",")[total]) for row in lines[1:]
            if row.split(",")[total]}


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_the_rerun_resumes_at_the_same_step(shards, tmp_path):
    args = tiny_fit_args(shards, tmp_path, 40, "--ckpt_path", "last")
    process = subprocess.Popen([sys.executable, "-m", "moee", *args], cwd=REPO, env=moee_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "csv/version_0/metrics.csv"
    deadline = time.monotonic() + 300
    while not (log.is_file() and len(read_log(tmp_path)) >= 3):  # 3 steps done
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    before = read_log(tmp_path)
    checkpoint = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
    step = checkpoint["global_step"]
    assert 3 <= step < 8  # stopped mid-epoch (8 batches per epoch), not at the end
    assert sorted(before) == list(range(step))  # the checkpoint is at the last finished step
    assert checkpoint["MoEEDataModule"] == {"global_step": step}
    assert len(checkpoint["rng_states"]) == 1
    assert checkpoint["optimizer_states"][0]["state"][0]["step"] == step
    assert not (tmp_path / "metrics.json").exists()  # it did not end normally

    run_moee(tiny_fit_args(shards, tmp_path, step + 3, "--ckpt_path", "last"))
    after = read_log(tmp_path)
    assert sorted(after) == [step, step + 1, step + 2]  # continues at the same step
    assert json.loads((tmp_path / "metrics.json").read_text())["global_step"] == step + 3
    recent = np.mean([before[s] for s in range(step - 3, step)])
    assert 0.5 * recent < after[step] < 2.0 * recent  # no jump: the loss curve continues
