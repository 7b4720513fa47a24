"""``DiffusionStage``: the LightningModule every training stage derives from.

A stage is a choice of which parameter groups train (see ``moee.models.moee_net``) and of how
the network is called (image or video mode, one expert, the full mixture). Everything else is
shared: the diffusion objective, the loss, classifier-free-guidance condition dropout, weight
hand-off between stages, EMA, checkpoints that hold only what the stage trains, and the
export of the trained weights as safetensors for the next stage.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy
from torch.distributed.tensor import DTensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from moee.data.batch import downsampled_images
from moee.models.conditioner import ConditionDropout, Conditioner, picked
from moee.models.moee_net import PARAMETER_GROUPS, MoEENet, MoEENetConfig, parameter_groups
from moee.models.objective import DiffusionObjective
from moee.models.sharding import shard_network
from moee.models.vae import PatchCodec
from moee.models.weights import (
    EXPERTS_KEY,
    GLOBAL_GATE_KEY,
    OBJECTIVE_KEY,
    check_objective,
    check_parallel_exports,
    load_net_weights,
    write_export,
)
from moee.stages.guard import NonFiniteGuard, check_finite
from moee.stages.losses import MoEELoss

log = logging.getLogger(__name__)


class ExponentialMovingAverage(torch.nn.Module):
    """EMA of the trainable parameters only (frozen ones never change): torch's
    ``AveragedModel`` with ``get_ema_multi_avg_fn``, over a list of those parameters rather
    than the whole network (which holds the frozen VAE and encoders).

    A submodule of the stage, so it moves with it to the device; its shadows are frozen
    copies, so optimizers and DDP leave them alone. ``W_0^EMA = W_0``, then each
    :meth:`update` is ``shadow ← decay·shadow + (1 − decay)·param``.
    """

    def __init__(self, parameters: dict[str, torch.nn.Parameter], decay: float) -> None:
        super().__init__()
        self.names = list(parameters)
        live = torch.nn.ParameterList(parameters.values())
        self.average = AveragedModel(live, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.average.requires_grad_(False)
        self.average.update_parameters(live)  # the first update copies: W_0^EMA = W_0

    @property
    def shadow(self) -> dict[str, torch.Tensor]:
        """{MoEENet name: EMA weight}."""
        return {name: p.detach() for name, p in zip(self.names, self.average.module)}

    @shadow.setter
    def shadow(self, weights: dict[str, torch.Tensor]) -> None:
        """Restore shadows (from a checkpoint), on the device and dtype they live on."""
        with torch.no_grad():
            for name, shadow in self.shadow.items():
                shadow.copy_(weights[name])

    @torch.no_grad()
    def update(self, parameters: dict[str, torch.nn.Parameter]) -> None:
        """shadow ← decay·shadow + (1 − decay)·param."""
        self.average.update_parameters(torch.nn.ParameterList(
            parameters[name] for name in self.names))

    @torch.no_grad()
    def swap(self, parameters: dict[str, torch.nn.Parameter]) -> None:
        """Exchange the live weights with their shadows (a second call swaps them back), so
        that validation measures the weights the stage exports (sgm's ``ema_scope``)."""
        for name, shadow in self.shadow.items():
            live = parameters[name].detach().clone()
            parameters[name].copy_(shadow)
            shadow.copy_(live)


class DiffusionStage(L.LightningModule):
    """Shared training logic of the three MoEE stages.

    Args:
        net: the network configuration (``preset: tiny`` or ``sd15`` and the weight sources).
        objective: noise schedule, prediction type, zero-terminal-SNR, noise offset.
        loss: the latent + time-weighted pixel/perceptual loss.
        optimizer, lr_scheduler: callables that receive the trainable parameters / optimizer.
        condition_dropout: per-condition drop probabilities for classifier-free guidance.
        init_weights: earlier stages' exported weights to load before training (in order).
        export_path: where ``on_train_end`` writes this stage's trained weights (safetensors).
        ema_decay: keep an EMA of the trained weights (exported instead of the raw ones).
        pixel_loss_frames: frames per sample decoded for the pixel-space loss terms.
        max_nonfinite_steps: steps with a NaN/Inf loss or gradient are skipped; this many in a
            row stop the run (:class:`~moee.stages.guard.NonFiniteGuard`; 0: never stop).
        lr_scales: learning-rate multipliers per parameter group, e.g. ``{"expert": 3}`` (a
            key names a group of ``PARAMETER_GROUPS`` or, like ``expert``, every ``expert_i``).
        lr_decay: the last this fraction of ``trainer.max_steps`` decays every learning rate
            linearly to zero (0: constant; instead of ``lr_scheduler``). A short run ends
            with its weights settled rather than at the noise of a constant rate.
        coarse_size, coarse_steps: a resolution curriculum. The first ``coarse_steps``
            training steps see the batch's images area-averaged to ``coarse_size`` px, the rest
            at full size (the low-resolution pretraining of Imagen and SD, within one stage;
            the U-Net is convolutional and its attention has no positions). Validation stays
            at full size. On the tiny image stage, 32 px steps run 2.6x as fast as 64 px ones;
            1,600 of them before 400 at 64 px bought lip sync and cost emotion on two seeds
            (``benchmarks/README.md``), so the CPU recipe does not use it.
    """

    trainable_groups: tuple[str, ...] = ()
    """The parameter groups this stage trains; everything else is frozen."""
    carried_groups: tuple[str, ...] = ()
    """Frozen groups that this stage's checkpoints and export still hold, so that the stages
    after it start from exactly these weights whatever their seed."""

    def __init__(
        self,
        net: MoEENetConfig | None = None,
        objective: DiffusionObjective | None = None,
        loss: MoEELoss | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        condition_dropout: ConditionDropout | None = None,
        init_weights: list[str] | None = None,
        export_path: str | None = None,
        ema_decay: float | None = None,
        pixel_loss_frames: int = 2,
        max_nonfinite_steps: int = 3,
        lr_scales: dict[str, float] | None = None,
        lr_decay: float = 0.0,
        coarse_size: int | None = None,
        coarse_steps: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["objective", "loss", "optimizer", "lr_scheduler"])
        self.net = MoEENet(net or MoEENetConfig())
        self.objective = objective or DiffusionObjective()
        if self.net.denoiser.reference_skip and self.objective.prediction_type != "sample":
            log.warning("the %s preset adds the portrait to the denoiser's output, a prior "
                        "for the clean-latent objective; %r prediction learns it away",
                        self.net.config.preset, self.objective.prediction_type)
        self.loss = loss or MoEELoss()
        if self.loss.chroma_weight != 1 and not isinstance(self.net.vae, PatchCodec):
            raise ValueError("loss.chroma_weight needs latents that are pixels (a preset with "
                             "a patch codec, patch_size); a VAE's latents have no colour "
                             "channels: leave it at 1")
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.export_path = export_path
        self.pixel_loss_frames = pixel_loss_frames
        self.lr_scales = check_lr_scales(lr_scales or {})
        if not 0 <= lr_decay <= 1 or (lr_decay and lr_scheduler is not None):
            raise ValueError(f"lr_decay must be in [0, 1] and without an lr_scheduler, got "
                             f"{lr_decay} with {lr_scheduler}")
        self.lr_decay = lr_decay
        self.coarse_size, self.coarse_steps = coarse_size, coarse_steps
        self.nonfinite_guard = NonFiniteGuard(max_nonfinite_steps)
        self.strict_loading = False  # checkpoints hold only what the stage trains
        check_parallel_exports(init_weights or [])
        for path in init_weights or []:
            self.load_net_weights(path)
        self.freeze_all_but(self.trainable_groups)
        self.conditioner = Conditioner(self.net, condition_dropout, self.trainable_groups)
        self.ema = ExponentialMovingAverage(self.trained_parameters(), ema_decay) \
            if ema_decay else None
        self.check_coarse_size()

    # ---- parameters -------------------------------------------------------------------------

    def load_net_weights(self, path: str | Path) -> None:
        """Load an earlier stage's weights into the network; they must have been trained with
        this stage's prediction type and noise schedule."""
        load_net_weights(self.net, path, hint=self.missing_checkpoint_hint())
        check_objective(path, self.objective)

    def check_coarse_size(self) -> None:
        """A one-line ValueError unless the resolution curriculum is off (neither argument) or
        runs a positive number of steps at a side every level of the U-Net can halve."""
        if self.coarse_steps < 0 or (self.coarse_size is not None and not self.coarse_steps):
            raise ValueError(f"coarse_size {self.coarse_size} needs a positive coarse_steps "
                             f"(the steps trained at that size), got {self.coarse_steps}")
        if not self.coarse_steps:
            return
        levels = len(self.net.denoiser.unet.config.block_out_channels) - 1
        step = self.net.vae.downsample * 2**levels
        if not self.coarse_size or self.coarse_size % step:
            raise ValueError(f"coarse_steps {self.coarse_steps} needs a coarse_size that is a "
                             f"positive multiple of {step} (the first stage's and the U-Net's "
                             f"downsampling), got {self.coarse_size}")

    def missing_checkpoint_hint(self) -> str:
        """What the user should do when an earlier stage's weights are missing."""
        return ": train the earlier stage first or fix the path in model.init_args"

    def freeze_all_but(self, groups: tuple[str, ...]) -> None:
        """requires_grad only for the parameters of ``groups``."""
        self.net.requires_grad_(False)
        for name, params in parameter_groups(self.net).items():
            if name in groups:
                for p in params:
                    p.requires_grad_(True)

    def trained_parameters(self) -> dict[str, torch.nn.Parameter]:
        """{MoEENet name: parameter} of everything this stage trains."""
        return {n: p for n, p in self.net.named_parameters() if p.requires_grad}

    def _optimizer_groups(self) -> list[dict[str, Any]]:
        """The trained parameters as optimizer groups, one per learning-rate scale."""
        by_scale: dict[float, list[torch.nn.Parameter]] = {}
        for group, params in parameter_groups(self.net).items():
            scale = next((v for k, v in self.lr_scales.items() if _names(k, group)), 1.0)
            by_scale.setdefault(float(scale), []).extend(p for p in params if p.requires_grad)
        return [{"params": params, "lr_scale": scale}
                for scale, params in by_scale.items() if params]

    def carried_parameters(self) -> dict[str, torch.nn.Parameter]:
        """{MoEENet name: parameter} of the frozen ``carried_groups``."""
        carried = {id(p) for group, params in parameter_groups(self.net).items()
                   if group in self.carried_groups for p in params}
        return {n: p for n, p in self.net.named_parameters() if id(p) in carried}

    def configure_model(self) -> None:
        """FSDP2: shard the network when a ``ModelParallelStrategy`` provides a device mesh
        (``configs/trainer/fsdp.yaml``; plan in :mod:`moee.models.sharding`), once; otherwise
        nothing.

        Options come from the trainer's :class:`~moee.launch.fsdp.FSDP2Strategy` (a plain
        ``ModelParallelStrategy`` gets fp32 and no activation checkpointing). The stage moves
        to the strategy's device first: ``ModelParallelStrategy`` moves nothing itself, and
        unsharded parts (frozen encoders, the loss networks) must sit on the device too.
        """
        if self.device_mesh is None or isinstance(self.net.denoiser, FSDPModule):
            return
        if self.ema is not None:
            raise NotImplementedError("EMA (model.init_args.ema_decay) is not supported with "
                                      "FSDP2; train with strategy ddp or without EMA")
        strategy = self.trainer.strategy
        options = {"mp_policy": getattr(strategy, "mixed_precision", MixedPrecisionPolicy()),
                   "reshard_after_forward": getattr(strategy, "reshard_after_forward", True)}
        if getattr(strategy, "activation_checkpointing", False):
            self.net.set_gradient_checkpointing(True)
        self.to(strategy.root_device)
        shard_network(self.net, self.device_mesh["data_parallel"], **options)

    def configure_callbacks(self) -> list[L.Callback]:
        """The stage's own callbacks: the NaN/Inf step guard."""
        return [self.nonfinite_guard]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self._optimizer_groups())
        for group in optimizer.param_groups:
            group["lr"] *= group.get("lr_scale", 1.0)
        if self.lr_decay:
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, linear_decay(self.trainer.max_steps, self.lr_decay))
        elif self.scheduler_factory is None:
            return optimizer
        else:
            scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "step"}}

    # ---- the diffusion step -----------------------------------------------------------------

    def condition_options(self, batch: dict[str, Any]) -> dict[str, Any]:
        """How this stage conditions the denoiser on ``batch``: keyword arguments of
        :meth:`~moee.models.conditioner.Conditioner.from_batch` (the emotion's routing,
        conditions the stage drops itself...)."""
        return {}

    @property
    def hears_audio(self) -> bool:
        """Whether the denoiser hears the window's audio (each picked frame's own tokens when
        the stage denoises single frames)."""
        return True

    def frame_pick(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """The one frame (b,) each sample is denoised at (image-mode stages), or ``None``: all
        of the window's frames."""
        return None

    def diffusion_step(self, batch: dict[str, Any], generator: torch.Generator | None = None,
                       cfg_dropout: bool = True) -> dict[str, torch.Tensor]:
        """Noise the batch's latents, predict, and return the loss terms."""
        pick = self.frame_pick(batch)
        frames = picked(batch["frames"], pick)
        latents = self.net.encode_frames(frames)
        noise = self.objective.sample_noise(latents, generator)
        timesteps = self.objective.sample_timesteps(frames.shape[0], latents.device, generator)
        noisy = self.objective.add_noise(latents, noise, timesteps)
        conditions = self.conditioner.from_batch(batch, pick=pick, audio=self.hears_audio,
                                                 dropout=cfg_dropout,
                                                 **self.condition_options(batch))
        prediction = self.net(noisy, timesteps, conditions, image_mode=pick is not None)
        target = self.objective.target(latents, noise, timesteps)
        decoded = chosen = landmarks = chosen_landmarks = None
        if self.loss.expression_weight and "landmarks" in batch:
            landmarks = picked(batch["landmarks"], pick)
        if self.loss.uses_pixels:
            index = torch.randperm(frames.shape[1], device=frames.device)[: self.pixel_loss_frames]
            x0 = self.objective.predict_x0(noisy[:, index], prediction[:, index], timesteps)
            decoded, chosen = self.net.vae.decode(x0), frames[:, index]
            chosen_landmarks = None if landmarks is None else landmarks[:, index]
        return self.loss(prediction, target, decoded, chosen,
                         self.objective.pixel_weight(timesteps), landmarks, chosen_landmarks)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.global_step < self.coarse_steps:
            batch = downsampled_images(batch, self.coarse_size)
        terms = self.diffusion_step(batch)
        b = batch["frames"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False,
                      batch_size=b)
        self.log("loss", terms["total"], prog_bar=True, logger=False, batch_size=b)
        return terms["total"]

    def on_validation_epoch_start(self) -> None:
        """Validate the EMA weights when there are some (they are what the stage exports)."""
        if self.ema is not None:
            self.ema.swap(self.trained_parameters())

    def on_validation_epoch_end(self) -> None:
        """Swap the live weights back before ``on_validation_end``, where ``ModelCheckpoint``
        saves: a checkpoint holds the live weights as weights and the EMA as the EMA."""
        if self.ema is not None:
            self.ema.swap(self.trained_parameters())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        terms = self.diffusion_step(batch, generator=generator, cfg_dropout=False)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True,
                      batch_size=batch["frames"].shape[0])

    # ---- EMA, checkpoints and export --------------------------------------------------------

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update(self.trained_parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trained and carried weights (the other frozen ones come from
        ``init_weights``) and the EMA."""
        trained = {f"net.{name}" for name in {**self.trained_parameters(),
                                               **self.carried_parameters()}}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in trained}
        if self.ema is not None:
            checkpoint["ema"] = self.ema.shadow

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and "ema" in checkpoint:
            self.ema.shadow = checkpoint["ema"]

    def exported_weights(self) -> dict[str, torch.Tensor]:
        """The trained weights (their EMA when enabled) and the carried ones, keyed by MoEENet
        parameter name.

        FSDP-sharded parameters are gathered, so every rank must call this.
        """
        trained = self.ema.shadow if self.ema is not None else self.trained_parameters()
        source = {**self.carried_parameters(), **trained}
        return {
            name: (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu().contiguous()
            for name, t in source.items()
        }

    def export(self, path: str | Path, weights: dict[str, torch.Tensor] | None = None,
               groups: tuple[str, ...] | None = None) -> Path:
        """Write the trained weights (or the given part of :meth:`exported_weights`, trained
        as ``groups``) as safetensors (stage name in the metadata), atomically.

        Every rank gathers the weights (collective under FSDP); global rank 0 writes the file.
        Non-finite weights are refused (:class:`~moee.stages.guard.NonFiniteWeightsError`, on
        every rank) and a full disk is one-line :class:`~moee.utils.WriteError`; either way
        the previous export is unchanged.
        """
        weights = self.exported_weights() if weights is None else weights
        path = Path(path)
        check_finite(weights, path)
        if self.trainer_is_attached and self.trainer.global_rank != 0:
            return path
        return write_export(weights, path, {
            "stage": type(self).__name__, "groups": ",".join(groups or self.trainable_groups),
            OBJECTIVE_KEY: json.dumps(self.objective.schedule),
            EXPERTS_KEY: str(self.net.config.num_experts),
            GLOBAL_GATE_KEY: str(self.net.config.global_gate).lower()})

    @property
    def trainer_is_attached(self) -> bool:
        """Whether this module runs under a Trainer (not when used on its own, as in tests)."""
        return self._trainer is not None

    def on_train_end(self) -> None:
        if self.export_path:
            self.export(self.export_path)


def linear_decay(total_steps: int, fraction: float) -> Callable[[int], float]:
    """The learning-rate factor at each step: 1, then down to 0 over the last ``fraction`` of
    ``total_steps``."""
    if total_steps <= 0:
        raise ValueError("lr_decay needs trainer.max_steps")
    decay_steps = max(1.0, fraction * total_steps)
    return lambda step: min(1.0, max(0.0, (total_steps - step) / decay_steps))


def _names(key: str, group: str) -> bool:
    """Whether an ``lr_scales`` key names ``group`` (``expert`` names every ``expert_i``)."""
    return group == key or group.startswith(f"{key}_")


def check_lr_scales(lr_scales: dict[str, float]) -> dict[str, float]:
    """``lr_scales`` itself, or a one-line ValueError for a key that names no parameter group
    or a scale that is not positive."""
    unknown = [k for k in lr_scales if not any(_names(k, g) for g in PARAMETER_GROUPS)]
    if unknown:
        raise ValueError(f"lr_scales names no parameter group: {unknown}; the groups are "
                         f"{', '.join(PARAMETER_GROUPS)}")
    if bad := {k: v for k, v in lr_scales.items() if not v > 0}:
        raise ValueError(f"lr_scales must be positive, got {bad}")
    return lr_scales


def emotion_shares(batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """(b 6) the basic-emotion weights of the batch's clips' own emotions (one-hot for a basic
    clip, the compound's shares for a compound, zeros for neutral)."""
    from moee.emotions import parse_emotion

    return torch.tensor([parse_emotion(name).weights for name in batch["emotion_name"]],
                        device=device, dtype=torch.float32)
