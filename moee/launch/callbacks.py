"""Callbacks for runs that may be preempted or run as sweep jobs.

* :class:`ResumableCheckpoint` — ``last.ckpt`` every N steps *and* when the run is stopped by
  SIGTERM (preemption, ``scancel``, a time limit), and ``ckpt_path: last`` that also finds
  Lightning's SLURM requeue checkpoints, so a restarted run continues where it stopped.
* :class:`MetricsFile` — the run's final metrics as ``metrics.json`` (read by ``sweep collect``).
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from moee.utils import write_json

HPC_PREFIX = "hpc_ckpt_"
"""Lightning's SLURM auto-requeue writes ``<default_root_dir>/hpc_ckpt_<n>.ckpt`` on SIGUSR1."""


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps ``last.ckpt`` current for restarts.

    Compared with ``ModelCheckpoint(save_last=True)``:

    * on SIGTERM, Lightning stops at the next batch boundary (every rank together) and raises
      ``SIGTERMException``; this callback then writes ``last.ckpt`` at exactly that step.
      Other exceptions write nothing: a crash on one rank must not start a collective save;
    * ``fit --ckpt_path last`` picks the newest of ``last.ckpt`` and the ``hpc_ckpt_<n>.ckpt``
      that Lightning's SLURM auto-requeue (SIGUSR1) leaves in ``default_root_dir``;
    * every checkpoint carries each rank's RNG states (torch, CUDA, NumPy, Python), restored
      per rank on resume when the world size is unchanged (Lightning saves none);
    * ``last.ckpt`` is overwritten in place (no ``last-v1.ckpt`` after a restart), and the
      default ``dirpath`` is ``<default_root_dir>/checkpoints``, the same for every restart
      (``ModelCheckpoint``'s default follows the logger's version, new for each run).

    Args:
        every_n_train_steps: also write ``last.ckpt`` every this many steps (``None``: at the
            end of every epoch, like ``ModelCheckpoint``).
        save_top_k: best checkpoints to keep besides ``last.ckpt`` (needs ``monitor``).
        save_last: ``ModelCheckpoint``'s (``True``: write ``last.ckpt``; ``"link"``).
        enable_version_counter: ``ModelCheckpoint``'s (``False``: overwrite ``last.ckpt``).
        **kwargs: any other ``ModelCheckpoint`` argument (``dirpath``, ``monitor``, ...).
    """

    def __init__(self, every_n_train_steps: int | None = None, save_top_k: int = 0,
                 save_last: bool | Literal["link"] = True, enable_version_counter: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(every_n_train_steps=every_n_train_steps, save_top_k=save_top_k,
                         save_last=save_last, enable_version_counter=enable_version_counter,
                         **kwargs)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._default_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _default_dirpath(self, trainer: L.Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Add every rank's RNG states (a collective: all ranks save checkpoints together)."""
        state = rng_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Restore this rank's RNG states (skipped when the world size changed)."""
        states = checkpoint.get("rng_states") or []
        if len(states) == trainer.world_size:
            set_rng_state(states[trainer.global_rank])

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        """Save ``last.ckpt`` when the run was stopped by SIGTERM."""
        if isinstance(exception, SIGTERMException) and not trainer.sanity_checking \
                and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        """``last`` candidates: ours plus Lightning's SLURM requeue checkpoints."""
        self._default_dirpath(trainer)
        root = Path(trainer.default_root_dir)
        hpc = {os.path.normpath(p) for p in root.glob(f"{HPC_PREFIX}*.ckpt")}
        return super()._find_last_checkpoints(trainer) | hpc


class MetricsFile(Callback):
    """Write ``path`` (JSON) when training ends normally: global step, epoch and every finite
    scalar in ``trainer.callback_metrics`` (a stopped or crashed run writes nothing).

    Args:
        path: the JSON file; ``None``: ``<default_root_dir>/metrics.json``.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Gather the final metrics and write them atomically."""
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
                   if value.numel() == 1 and math.isfinite(float(value))}
        record = {"global_step": trainer.global_step, "epoch": trainer.current_epoch,
                  "metrics": metrics}
        write_json(self.path or Path(trainer.default_root_dir) / "metrics.json", record)


def rng_state() -> dict[str, Any]:
    """This process's RNG states, as tensors and tuples (loadable with ``weights_only``)."""
    # the legacy global NumPy RNG is the one third-party code draws from
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states from :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
