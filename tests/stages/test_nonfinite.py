"""Non-finite training: a NaN batch's step is skipped, a run of them stops the run with one
line naming the steps, and an export never writes NaN weights."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from moee.stages import ExpertModule
from moee.stages.guard import NonFiniteTrainingError, NonFiniteWeightsError
from moee.stages.losses import MoEELoss
from tests.clips import make_batch, make_test_clip


def stage(max_nonfinite_steps: int) -> ExpertModule:
    return ExpertModule(emotion="sad", loss=MoEELoss(perceptual_weights=None),
                        max_nonfinite_steps=max_nonfinite_steps,
                        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))


@pytest.fixture(scope="module")
def good_batch():
    return make_batch(make_test_clip(emotion="sad", num_frames=4, size=32), num_frames=2)


def nan_batch(batch):
    """The batch with NaN frames: the loss of its step is NaN."""
    return {**batch, "frames": torch.full_like(batch["frames"], float("nan"))}


def fit(module: ExpertModule, batches: list[dict]) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_steps=len(batches), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return trainer


def trained(module: ExpertModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.trained_parameters().items()}


def test_a_nan_step_is_skipped_and_leaves_weights_and_optimizer_alone(good_batch):
    module = stage(max_nonfinite_steps=3)
    before = trained(module)
    trainer = fit(module, [nan_batch(good_batch)])
    assert module.nonfinite_guard.skipped == [0]
    after = trained(module)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not trainer.optimizers[0].state  # AdamW never saw a gradient


def test_good_steps_between_bad_ones_train_and_reset_the_count(good_batch):
    module = stage(max_nonfinite_steps=2)
    before = trained(module)
    bad = nan_batch(good_batch)
    fit(module, [bad, good_batch, bad, good_batch])
    assert module.nonfinite_guard.skipped == [0, 2]
    after = trained(module)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())


def test_too_many_bad_steps_in_a_row_stop_with_one_line(good_batch):
    module = stage(max_nonfinite_steps=2)
    bad = nan_batch(good_batch)
    with pytest.raises(NonFiniteTrainingError) as info:
        fit(module, [good_batch, bad, bad, good_batch])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("training stopped at global step 2: the loss or gradients were "
                              "NaN or Inf at steps 1-2 (2 in a row")
    assert "max_nonfinite_steps" in message


def test_an_export_refuses_non_finite_weights(tmp_path):
    module = stage(max_nonfinite_steps=3)
    path = tmp_path / "expert_sad.safetensors"
    module.export(path)
    before = path.read_bytes()
    name, parameter = next(iter(module.trained_parameters().items()))
    with torch.no_grad():
        parameter.view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteWeightsError) as info:
        module.export(path)
    assert str(info.value) == (f"refusing to export {path}: 1 of "
                               f"{len(module.exported_weights())} tensors hold NaN or Inf "
                               f"(first: {name}); the previous file, if any, is unchanged")
    assert path.read_bytes() == before
