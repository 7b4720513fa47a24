"""Non-finite training: skip the steps whose loss or gradients are NaN or Inf, stop after a run
of them, and never export non-finite weights.

:class:`NonFiniteGuard` is the callback every stage adds (``configure_callbacks``) with its
``max_nonfinite_steps``. A bad step is skipped by dropping the gradients before the optimizer
step (the optimizer leaves parameters without gradients alone: no update, no weight decay, no
moment change); the decision is taken on every rank together. After ``max_in_a_row`` bad steps
in a row the run stops with one line naming the steps (:class:`NonFiniteTrainingError`).
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.distributed.tensor import DTensor

from moee.errors import MoEEError

log = logging.getLogger(__name__)


class NonFiniteTrainingError(MoEEError, RuntimeError):
    """Training stopped after too many steps in a row with a NaN or Inf loss or gradient."""


class NonFiniteWeightsError(MoEEError, ValueError):
    """Weights holding NaN or Inf that an export refuses to write."""


def check_finite(weights: dict[str, torch.Tensor], path: object) -> None:
    """Raise :class:`NonFiniteWeightsError` (one line) if a floating-point tensor of
    ``weights`` holds NaN or Inf; ``path`` is the file that would have been written."""
    bad = [name for name, tensor in weights.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise NonFiniteWeightsError(
            f"refusing to export {path}: {len(bad)} of {len(weights)} tensors hold NaN or Inf "
            f"(first: {bad[0]}); the previous file, if any, is unchanged")


def gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every gradient of ``optimizer``'s parameters is finite (one reduction; FSDP2
    shards are combined over the ranks)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    if not grads:
        return True
    norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return bool(torch.isfinite(norm))


class NonFiniteGuard(L.Callback):
    """Skip optimizer steps with a NaN/Inf loss or gradient; stop after ``max_in_a_row``.

    Under fp16 mixed precision the gradient scaler already skips steps with Inf gradients
    (and lowers its scale), so only the loss is checked there.

    Args:
        max_in_a_row: bad steps in a row that stop the run (``0``: never stop, only skip).
    """

    def __init__(self, max_in_a_row: int = 3) -> None:
        if max_in_a_row < 0:
            raise ValueError(f"max_nonfinite_steps must be >= 0, got {max_in_a_row}")
        self.max_in_a_row = max_in_a_row
        self.skipped: list[int] = []
        """Global steps skipped so far."""
        self.in_a_row = 0
        self._loss_bad = False

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        """Note a non-finite loss (of any micro-batch of the step)."""
        self._loss_bad |= not bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        """Drop the gradients of a bad step (every rank together); stop after too many."""
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        bad = self._loss_bad or (not scaled and not gradients_finite(optimizer))
        self._loss_bad = False
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            self.in_a_row = 0
            return
        step = trainer.global_step
        self.skipped.append(step)
        self.in_a_row += 1
        if not scaled:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            first = step - self.in_a_row + 1
            raise NonFiniteTrainingError(
                f"training stopped at global step {step}: the loss or gradients were NaN or Inf "
                f"at steps {first}-{step} ({self.in_a_row} in a row, each skipped); nothing "
                "was exported; lower the learning rate, check the data, or resume from the "
                "last checkpoint (model.init_args.max_nonfinite_steps sets the limit)")
        if len(self.skipped) == 1:
            _warn(f"global step {step} skipped: NaN or Inf in the loss or gradients (the "
                  f"run stops after {self.max_in_a_row} in a row)")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """One line when steps were skipped."""
        if self.skipped:
            _warn(f"{len(self.skipped)} training step(s) skipped for NaN or Inf loss or "
                  f"gradients (first at global step {self.skipped[0]})")


@rank_zero_only
def _warn(message: str) -> None:
    log.warning(message)
