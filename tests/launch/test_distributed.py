"""DDP and FSDP2 on CPU (gloo): equivalence with one process, disjoint data, sharded checkpoints.

Run as a module from the repository root (``python -m tests.launch.test_distributed OUT
STRATEGY DEVICES SHARDS``) it is the worker of the equivalence test: Lightning's launcher starts
the second rank by running it again. (As a module, so that ``tests`` is this checkout's test
package: torch-fidelity installs a ``tests`` package of its own.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.distributed.tensor import DTensor

from moee.data.datamodule import MoEEDataModule
from moee.data.sampling import SamplingOptions
from moee.launch.fsdp import FSDP2Strategy
from moee.models.sharding import shard_network
from moee.stages import ExpertModule
from moee.stages.losses import MoEELoss
from tests.clips import make_batch, make_test_clip
from tests.launch.conftest import REPO, moee_env, run_moee, tiny_fit_args
from tests.processes import run_to_end

SAMPLES = 4
"""Samples of the equivalence step: one batch of 4 in one process, 2 × 2 in two."""


class PerSampleSeeded(ExpertModule):
    """The sad expert with a batch loss that does not depend on how samples are split.

    The loader yields sample indices; each sample's diffusion step (VAE sampling, noise,
    timestep, pixel-loss frames) runs with the RNG seeded by its index, without condition
    dropout, and the batch loss is the mean over samples — so the mean gradient over 2 ranks
    × 2 samples is the gradient of 1 rank × 4 samples.
    """

    def __init__(self) -> None:
        super().__init__(emotion="sad", optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
                         loss=MoEELoss(pixel_weight=0.5, perceptual_weights="random",
                                       perceptual_depth=1))
        clips = [make_test_clip(identity=f"id{i}", emotion="sad", num_frames=6, size=32, seed=i)
                 for i in range(SAMPLES)]
        self.samples = [make_batch(clip, num_frames=2) for clip in clips]
        self.seen: list[int] = []

    def training_step(self, indices: torch.Tensor, batch_idx: int) -> torch.Tensor:
        losses = []
        for index in indices.tolist():
            self.seen.append(index)
            torch.manual_seed(index)
            losses.append(self.diffusion_step(self.samples[index], cfg_dropout=False)["total"])
        return torch.stack(losses).mean()


def worker(out: Path, strategy: str, devices: int, shards: Path) -> None:
    """One SGD step on the 4 samples with ``devices`` processes; write the trained weights
    (rank 0), each rank's sample indices and the shard clips each rank's loader reads."""
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = PerSampleSeeded()
    # the text branch of Emotion-to-Latents is unused without text: DDP must look for unused
    # parameters, or it silently skips the gradient all-reduce (and fails at the next step)
    strategies = {"ddp": DDPStrategy(find_unused_parameters=True),
                  "fsdp": FSDP2Strategy(param_dtype=None, reduce_dtype=None,
                                        activation_checkpointing=False)}
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategies[strategy],
                        max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(list(range(SAMPLES)), batch_size=SAMPLES // devices)
    trainer.fit(module, train_dataloaders=loader)
    weights = {name: p.full_tensor() if isinstance(p, DTensor) else p.detach()
               for name, p in module.trained_parameters().items()}
    streams = {}
    for resampled in (False, True):
        data = MoEEDataModule(train=str(shards), batch_size=1, num_workers=0,
                              sampling=SamplingOptions(num_frames=2), samples_per_epoch=8,
                              shuffle_buffer=1, resampled=resampled)
        data.trainer = trainer
        streams[str(resampled)] = [key for batch in data.train_dataloader()
                                   for key in batch["key"]]
    rank = trainer.global_rank
    (out / f"{strategy}{devices}_rank{rank}.json").write_text(
        json.dumps({"seen": module.seen, "streams": streams}))
    if rank == 0:
        torch.save(weights, out / f"{strategy}{devices}.pt")


def run_worker(out: Path, strategy: str, devices: int, shards: Path) -> None:
    """Run :func:`worker` in a fresh process (its ranks in fresh processes too, all ended with
    it)."""
    result = run_to_end([sys.executable, "-m", "tests.launch.test_distributed", str(out),
                         strategy, str(devices), str(shards)], 600, cwd=REPO, env=moee_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_doubled_batch(strategy, shards, tmp_path):
    run_worker(tmp_path, "ddp", 1, shards)
    run_worker(tmp_path, strategy, 2, shards)
    ranks = [json.loads((tmp_path / f"{strategy}2_rank{r}.json").read_text()) for r in (0, 1)]
    # the sampler gives the ranks disjoint halves of the step's samples
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == list(range(SAMPLES))
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])
    # the shard loader: single-pass ranks read disjoint clips; resampled ranks differ
    single = [set(r["streams"]["False"]) for r in ranks]
    assert single[0] and single[1] and not single[0] & single[1]
    assert ranks[0]["streams"]["True"] != ranks[1]["streams"]["True"]
    one, two = torch.load(tmp_path / "ddp1.pt"), torch.load(tmp_path / f"{strategy}2.pt")
    assert one.keys() == two.keys()
    moved = max((one[k] - PerSampleSeeded().trained_parameters()[k]).abs().max() for k in one)
    assert moved > 1e-4  # the step changed the weights
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.fixture
def process_group():
    """A one-process gloo group and its 1-device mesh (destroyed afterwards)."""
    from torch.distributed.device_mesh import init_device_mesh

    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0,
                                         world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        torch.distributed.destroy_process_group()


def test_fsdp_plan_shards_the_unets_and_keeps_frozen_parts_out_of_the_optimizer(process_group):
    stage = PerSampleSeeded()
    trained = set(stage.trained_parameters())
    shard_network(stage.net, process_group)
    params = dict(stage.net.named_parameters())
    assert set(stage.trained_parameters()) == trained  # names survive sharding
    for name, p in params.items():
        frozen_encoder = name.startswith(("vae.", "image_encoder.", "audio_encoder.",
                                          "emotion_to_latents.text_encoder.",
                                          "emotion_to_latents.speech_encoder."))
        assert isinstance(p, DTensor) != frozen_encoder, name
    optimizer = stage.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(params[n]) for n in trained}
    loss = stage.training_step(torch.tensor([0, 1]), 0)
    loss.backward()
    optimizer.step()
    with_grad = {n for n, p in params.items() if p.grad is not None}
    assert with_grad and with_grad <= trained  # frozen U-Net shards get no gradients
    assert {id(p) for p in optimizer.state} <= optimized


@pytest.mark.slow
def test_fsdp_two_processes_save_a_sharded_checkpoint_and_resume(shards, tmp_path):
    fsdp = ("--config", str(REPO / "configs/trainer/fsdp_cpu.yaml"))
    run_moee(tiny_fit_args(shards, tmp_path, 2, *fsdp))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2  # one shard per rank
    from torch.distributed.checkpoint import FileSystemReader

    keys = list(FileSystemReader(last).read_metadata().state_dict_metadata)
    weights = {k.removeprefix("state_dict.net.") for k in keys if k.startswith("state_dict.")}
    trained = set(PerSampleSeeded().trained_parameters())  # the same sad expert
    assert weights == trained  # only the expert and Emotion-to-Latents, no frozen weights
    assert all(k.startswith(("state_dict.", "optimizer_0.")) for k in keys)
    export = tmp_path / "expert_sad.safetensors"
    run_moee(tiny_fit_args(shards, tmp_path, 4, *fsdp, "--ckpt_path", "last",
                           "--model.init_args.export_path", str(export)))
    assert json.loads((tmp_path / "metrics.json").read_text())["global_step"] == 4
    from safetensors.torch import load_file

    assert set(load_file(export)) == trained  # gathered from both ranks' shards
    header, *rows = (tmp_path / "csv/version_0/metrics.csv").read_text().splitlines()
    step, total = header.split(",").index("step"), header.split(",").index("train/total")
    steps = [int(row.split(",")[step]) for row in rows if row.split(",")[total]]
    assert steps == [2, 3]  # continued at step 2


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
