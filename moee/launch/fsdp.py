"""FSDP2 for the MoEE stages: :class:`FSDP2Strategy`.

``FSDP2Strategy`` is Lightning's ``ModelParallelStrategy`` (FSDP2 / DTensor, CPU and GPU) with
MoEE's defaults — all processes in one data-parallel dimension, bf16 parameters with fp32
gradient reduction, activation checkpointing — checkpoint loading that accepts the stages'
partial checkpoints, and sharded checkpoint folders written atomically (a failed save keeps
the previous folder). ``DiffusionStage.configure_model`` shards the network with the
strategy's options.

The sharding plan itself sits beside the network (:mod:`moee.models.sharding`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import MixedPrecisionPolicy

from moee.launch.checkpoints import is_local
from moee.utils import new_temp, replace, storage_errors

DType = Literal["float32", "bfloat16", "float16"] | None


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` configured for MoEE's stages (FSDP2 over every process).

    Args:
        data_parallel_size: processes that shard the model; ``"auto"``: all of them
            (Lightning's own default is the number of nodes).
        tensor_parallel_size: ``"auto"``: 1 (MoEE uses no tensor parallelism).
        param_dtype: dtype the sharded units compute in (``None``: the parameters' own).
        reduce_dtype: dtype of the gradient reduce-scatter (``None``: ``param_dtype``).
        activation_checkpointing: recompute the U-Nets' blocks in backward.
        reshard_after_forward: free the gathered parameters after each unit's forward (ZeRO-3);
            ``False`` keeps them until backward (ZeRO-2: more memory, less communication).
        save_distributed_checkpoint: each rank writes its shard (a checkpoint folder).
        process_group_backend: ``nccl`` / ``gloo``; ``None`` picks by device.
    """

    def __init__(
        self,
        data_parallel_size: int | Literal["auto"] = "auto",
        tensor_parallel_size: int | Literal["auto"] = "auto",
        param_dtype: DType = "bfloat16",
        reduce_dtype: DType = "float32",
        activation_checkpointing: bool = True,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(data_parallel_size, tensor_parallel_size, save_distributed_checkpoint,
                         process_group_backend)
        self.mixed_precision = MixedPrecisionPolicy(
            param_dtype=_dtype(param_dtype), reduce_dtype=_dtype(reduce_dtype))
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        """Resolve ``"auto"`` sizes to pure data parallelism over all processes."""
        if self._tensor_parallel_size == "auto":
            self._tensor_parallel_size = 1
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath,
                        storage_options: Any | None = None) -> None:
        """Save; a sharded checkpoint goes to a temporary folder that replaces ``filepath`` once
        every rank has written its shard, so a full disk or a crash keeps the previous
        checkpoint (storage errors are one-line :class:`~moee.utils.WriteError`)."""
        if not self._save_distributed_checkpoint or not is_local(filepath):
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        final = Path(self.broadcast(str(filepath)))
        tmp = Path(self.broadcast(str(new_temp(final, directory=True)) if self.global_rank == 0
                                  else None))
        def remove_temp() -> None:
            if self.global_rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)

        with storage_errors(final, cleanup=remove_temp):
            super().save_checkpoint(checkpoint, tmp, storage_options)
            self.barrier("moee_checkpoint_written")
            if self.global_rank == 0:
                replace(tmp, final)
        self.barrier("moee_checkpoint_renamed")

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a checkpoint; a sharded one may hold only the trained weights (stage checkpoints
        leave frozen ones out), which Lightning's strict distributed loader would reject."""
        path = Path(self.broadcast(checkpoint_path))
        if not path.is_dir():
            return super().load_checkpoint(path, weights_only)
        from torch.distributed.checkpoint import DefaultLoadPlanner, load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        module_state = {"state_dict": get_model_state_dict(self.model)}
        load(module_state, checkpoint_id=path, planner=DefaultLoadPlanner(allow_partial_load=True))
        self.model.load_state_dict(module_state["state_dict"], strict=False)
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            optim_state = {key: get_optimizer_state_dict(self.model, optimizer)}
            load(optim_state, checkpoint_id=path)
            set_optimizer_state_dict(self.model, optimizer, optim_state[key],
                                     options=StateDictOptions(cpu_offload=True))
        from lightning.fabric.strategies.model_parallel import _METADATA_FILENAME

        return torch.load(path / _METADATA_FILENAME, weights_only=weights_only)


def _dtype(name: DType) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)
