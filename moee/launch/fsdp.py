"""FSDP2 for the MoEE stages: :class:`FSDP2Strategy` and the sharding plan of :func:`shard_stage`.

``FSDP2Strategy`` is Lightning's ``ModelParallelStrategy`` (FSDP2 / DTensor, CPU and GPU) with
MoEE's defaults — all processes in one data-parallel dimension, bf16 parameters with fp32
gradient reduction, activation checkpointing — checkpoint loading that accepts the stages'
partial checkpoints, and sharded checkpoint folders written atomically (a failed save keeps
the previous folder). ``DiffusionStage.configure_model`` calls :func:`shard_stage`.

The sharding plan (:func:`shard_network`). FSDP2 gathers a unit's parameters when the unit is
*called*, and a root unit must run before the units inside it; the stages call the VAE,
``encode_reference`` and ``encode_audio`` before ``MoEENet.forward``, so ``MoEENet`` itself is
no unit. Instead there are four roots, each called on its own:

* ``denoiser`` and ``reference_net``, with every down / mid / up block of their U-Nets — and,
  in the denoiser, each :class:`~moee.models.unet.BlockExtras` (audio attention, Emotion MoE,
  temporal attention) — as units inside (parameters are all-gathered only while a block runs);
* ``audio_projection``;
* ``emotion_to_latents`` without resharding after forward, since ``MoEENet.forward`` reads its
  null latent (classifier-free guidance) after calling it.

The frozen pretrained encoders (VAE, CLIP image encoder, wav2vec2, T5, speech-emotion encoder)
are *not* sharded: they hold no gradients or optimizer state, are small next to the U-Nets, and
are called as methods (``vae.encode``) that FSDP2 cannot hook. Frozen U-Net weights of stages 2
and 3 *are* sharded — 1/N of them per rank — but have ``requires_grad=False``, so FSDP2 neither
allocates nor reduce-scatters gradients for them, and the optimizer receives only the trained
parameters (``DiffusionStage.trained_parameters``): optimizer state exists for the trained
groups alone, sharded like their parameters.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from moee.launch.checkpoints import is_local
from moee.utils import new_temp, replace, storage_errors

if TYPE_CHECKING:
    from moee.stages.base import DiffusionStage

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


def shard_stage(stage: DiffusionStage) -> None:
    """Apply FSDP2 to ``stage.net`` over the data-parallel mesh of its strategy (idempotent).

    Options come from the trainer's :class:`FSDP2Strategy` (a plain ``ModelParallelStrategy``
    gets fp32 and no activation checkpointing). The stage moves to the strategy's device first:
    ``ModelParallelStrategy`` moves nothing itself, and unsharded parts (frozen encoders, the
    loss networks) must sit on the device too.
    """
    if isinstance(stage.net.denoiser, FSDPModule):
        return
    if stage.ema is not None:
        raise NotImplementedError("EMA (model.init_args.ema_decay) is not supported with FSDP2; "
                                  "train with strategy ddp or without EMA")
    strategy = stage.trainer.strategy
    options = {"mp_policy": getattr(strategy, "mixed_precision", MixedPrecisionPolicy()),
               "reshard_after_forward": getattr(strategy, "reshard_after_forward", True)}
    if getattr(strategy, "activation_checkpointing", False):
        stage.net.set_gradient_checkpointing(True)
    stage.to(strategy.root_device)
    shard_network(stage.net, stage.device_mesh["data_parallel"], **options)


def shard_network(net: torch.nn.Module, mesh: DeviceMesh, **options: Any) -> None:
    """The sharding plan of :class:`~moee.models.moee_net.MoEENet` (see the module docstring).

    ``options`` go to every ``fully_shard`` call (``mp_policy``, ``reshard_after_forward``).
    """
    for unet in (net.denoiser.unet, net.reference_net.unet):
        for block in (*unet.down_blocks, unet.mid_block, *unet.up_blocks):
            fully_shard(block, mesh=mesh, **options)
    for extras in net.denoiser.blocks.values():
        fully_shard(extras, mesh=mesh, **options)
    for root in (net.denoiser, net.reference_net, net.audio_projection):
        fully_shard(root, mesh=mesh, **options)
    latents = net.emotion_to_latents
    frozen = {p for m in (latents.text_encoder, latents.speech_encoder) for p in m.parameters()}
    fully_shard(latents, mesh=mesh, ignored_params=frozen,
                **{**options, "reshard_after_forward": False})
