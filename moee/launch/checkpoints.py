"""Checkpoints that a full disk or a crash cannot damage.

Lightning writes a checkpoint through its strategy's ``CheckpointIO``. :class:`AtomicCheckpointIO`
writes local checkpoints with :func:`moee.utils.atomic_path`: a write that fails (ENOSPC, EIO,
SIGKILL) leaves the previous ``last.ckpt`` intact and no temporary behind (a killed process's
temporary is removed by the next save), and a storage error is one line naming the path and
the free space. ``python -m moee`` installs it on every trainer (:func:`use_atomic_checkpoints`);
FSDP2's sharded checkpoint folders get the same treatment in
:meth:`moee.launch.fsdp.FSDP2Strategy.save_checkpoint`.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from moee.utils import atomic_path


def is_local(path: str | os.PathLike) -> bool:
    """Whether ``path`` is on a local (or mounted) file system rather than a URL."""
    text = os.fspath(path)
    return "://" not in text or text.startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic with one-line storage errors
    (remote URLs go through Lightning's own fsspec writer)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to a temporary beside ``path``, then rename it onto ``path``."""
        if storage_options is not None or not is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(os.fspath(path).removeprefix("file://")) as tmp:
            with open(tmp, "wb") as handle:  # a handle: a full disk surfaces as its OSError
                torch.save(checkpoint, handle)


def use_atomic_checkpoints(trainer: L.Trainer) -> None:
    """Give ``trainer``'s strategy an :class:`AtomicCheckpointIO` unless it was configured
    with a checkpoint IO of its own."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
