"""Stage 3: learn the local and global gates that mix the frozen emotion experts."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from moee.emotions import BASIC_EMOTIONS, NUM_EXPERTS
from moee.errors import MoEEError
from moee.models.emotion_latents import MODALITIES, EmotionInputs
from moee.models.emotion_moe import EmotionMoE
from moee.models.moee_net import SPEECH_ENCODER
from moee.models.weights import export_metadata
from moee.stages.base import DiffusionStage, emotion_shares, linear_decay

log = logging.getLogger(__name__)

ALIGNMENT_DECAY = 0.3
"""The share of the alignment warm-up's steps that take its learning rate linearly to zero."""


class GatingModule(DiffusionStage):
    """Stage 3 of MoEE: gates φ, ω and the AU, text and speech paths of Emotion-to-Latents
    learn on compound and basic data.

    The label path of Emotion-to-Latents (its label MLP and the attention every modality goes
    through) stays as the backbone export carried it: the experts learnt on exactly those
    latents, and moving them undoes every basic label (measured on the tiny model: 23/48
    basic stills read as asked before a gating stage that trained the whole module, 4/48
    after it). The other modalities learn to land where the label's latents are.

    ``init_weights`` lists the backbone export and the six expert exports. The mean global
    gate weight per expert and the mean local gate activation are logged every step
    (``gates/global_<emotion>``, ``gates/local_<emotion>``).

    Two optional terms, MoEE's additions to the paper's diffusion loss, speed up what it
    learns only indirectly (every term is logged under ``train/``):

    Args:
        routing_weight: weight of the cross-entropy between every MoE layer's global gate and
            the clip's basic-emotion shares (``happily surprised``: surprised 0.6, happy 0.4),
            so that each condition is routed to the experts of its emotions.
        alignment_weight: weight of the squared distance between the emotion latents of each
            modality alone (AUs, text, speech) and those of the clip's label alone (held fixed
            as the target), so that every way of naming an emotion lands where the experts
            learnt the label.
        alignment_routing_weight: weight of a second alignment term: the cross-entropy,
            against the clip's emotion shares, of every MoE layer's global-gate emotion term
            (``context_gate``, held fixed here) on each other modality's latents. The squared
            distance alone pulls an uncertain condition (a voice heard as 0.6 angry) to the
            average of the labels' latents, which the gates send to the one expert nearest
            that average whatever the clip; this term pulls it to where the gates route it
            to its own emotion's expert. Part of the alignment term, so in the denoising steps
            it is scaled by ``alignment_weight`` too.
        train_label_path: also train the label path (an ablation: the experts then see
            latents they were not trained on).
        alignment_warmup: before the first denoising step, this many steps of the alignment
            term alone (:meth:`warm_up_alignment`) on clip conditions without frames: they
            give the AU, text and speech paths the examples that the stage's few denoising
            steps cannot, at a fraction of a denoising step's cost. Not counted in
            ``trainer.max_steps``.
        alignment_batch: clips per warm-up step (every modality of each at once).
        alignment_lr: the warm-up's learning rate (``None``: the optimizer's); the denoising
            steps after it keep the optimizer's, which may be lower so as not to undo it.
        prototype_margin: start every MoE layer's global-gate emotion term as a router to the
            nearest basic label's latents (:meth:`EmotionMoE.route_by_prototypes`), a label
            on its prototype preferring its own expert by this many logits; ``None`` keeps the
            loaded or random gate. Applied once, to the weights ``init_weights`` loaded (a
            resumed run restores its own gates over it).
        freeze_speech_encoder: keep a random stand-in speech-emotion encoder (the tiny
            preset's) as ``init_weights`` loaded it, pretrained by
            :class:`~moee.stages.SpeechEmotionModule`, and carry it into the export: it is then
            frozen like the real configuration's pretrained one, and only the speech query MLP
            learns. (A pretrained encoder is always frozen and never exported.)
    """

    def __init__(self, *args, routing_weight: float = 0.0, alignment_weight: float = 0.0,
                 alignment_routing_weight: float = 0.0, train_label_path: bool = False,
                 alignment_warmup: int = 0, alignment_batch: int = 32,
                 alignment_lr: float | None = None,
                 prototype_margin: float | None = None,
                 freeze_speech_encoder: bool = False, **kwargs) -> None:
        if alignment_routing_weight < 0:
            raise ValueError(f"alignment_routing_weight must be >= 0, got "
                             f"{alignment_routing_weight}")
        if alignment_warmup < 0 or alignment_batch < 1 or (alignment_lr is not None
                                                           and alignment_lr <= 0):
            raise ValueError(f"alignment_warmup must be >= 0, alignment_batch >= 1 and "
                             f"alignment_lr > 0, got {alignment_warmup}, {alignment_batch} and "
                             f"{alignment_lr}")
        self.train_label_path = train_label_path
        self.freeze_speech_encoder = freeze_speech_encoder
        super().__init__(*args, **kwargs)
        self.routing_weight = routing_weight
        self.alignment_weight = alignment_weight
        self.alignment_routing_weight = alignment_routing_weight
        self.alignment_warmup = alignment_warmup
        self.alignment_batch = alignment_batch
        self.alignment_lr = alignment_lr
        exports = {export_metadata(p).get("stage") for p in kwargs.get("init_weights") or []}
        if self._stand_in_speech_encoder() and "SpeechEmotionModule" not in exports:
            log.warning("freeze_speech_encoder keeps a random speech-emotion encoder: add the "
                        "SpeechEmotionModule export (configs/tiny/speech_emotion.yaml) to "
                        "init_weights")
        if prototype_margin is not None:
            self.route_by_prototypes(prototype_margin)
        self._gate_sums: dict[str, torch.Tensor] = {}
        self._global_gates: list[torch.Tensor] = []
        for module in self.net.modules():
            if isinstance(module, EmotionMoE) and module.local_gate is not None:  # not w/o MoE
                module.register_forward_hook(self._record_gates)

    @property
    def trainable_groups(self) -> tuple[str, ...]:
        label_path = ("emotion_latents",) if self.train_label_path else ()
        return ("gates", "emotion_modalities", *label_path)

    @torch.no_grad()
    def route_by_prototypes(self, margin: float) -> None:
        """Set every Emotion MoE layer's global gate to route by the nearest basic label: the
        prototypes are the token-mean latents of each expert's label at full intensity."""
        layers = [m for m in self.net.modules()
                  if isinstance(m, EmotionMoE) and m.context_gate is not None]
        if not layers:  # the "w/o global gate" and "w/o MoE" ablations have none to set
            log.info("prototype_margin ignored: the network has no learned global gate")
            return
        labels = torch.eye(NUM_EXPERTS, device=self.device)
        prototypes = self.net.encode_emotion(EmotionInputs(label=labels)).mean(1)
        for module in layers:
            module.route_by_prototypes(prototypes, margin)

    def _stand_in_speech_encoder(self) -> dict[str, nn.Parameter]:
        """{MoEENet name: parameter} of the speech-emotion encoder when this stage freezes a
        stand-in (else empty)."""
        if not self.freeze_speech_encoder or self.net.config.weights.speech_encoder:
            return {}
        return {name: p for name, p in self.net.named_parameters()
                if name.startswith(f"{SPEECH_ENCODER}.")}

    def freeze_all_but(self, groups: tuple[str, ...]) -> None:
        super().freeze_all_but(groups)
        for p in self._stand_in_speech_encoder().values():
            p.requires_grad_(False)

    def carried_parameters(self) -> dict[str, nn.Parameter]:
        return {**super().carried_parameters(), **self._stand_in_speech_encoder()}

    def on_train_start(self) -> None:
        """A fresh run starts with the alignment warm-up (a resumed one has it in its weights)."""
        if self.alignment_warmup and self.global_step == 0:
            self.warm_up_alignment(self.alignment_warmup)

    def warm_up_alignment(self, steps: int) -> None:
        """Train the AU, text and speech paths on the alignment term alone for ``steps`` steps.

        Each step takes ``alignment_batch`` random clips of the stage's training data, at
        windows drawn as training draws them, with all their modalities and without their
        frames (:class:`~moee.data.conditions.ConditionBatches`). It uses the stage's optimizer
        at ``alignment_lr`` and its precision, clips gradients as the trainer does, averages
        them over the ranks, and takes the learning rate linearly to zero over the last
        :data:`ALIGNMENT_DECAY` of the steps (then restores the optimizer's for the denoising
        steps, and starts an EMA from the warmed-up weights). The loss is logged as
        ``train/alignment_warmup``. Not with FSDP2.
        """
        from tqdm import tqdm

        from moee.data.conditions import ConditionBatches, read_conditions
        from moee.data.datamodule import MoEEDataModule

        data = self.trainer.datamodule
        if not isinstance(data, MoEEDataModule):
            raise MoEEError("alignment_warmup reads its clips through MoEEDataModule: set "
                            "data to it, or alignment_warmup to 0")
        if self.device_mesh is not None:
            raise MoEEError("alignment_warmup runs outside FSDP2's sharded forward: set it to 0 "
                            "with an FSDP2 strategy, or train the gates with ddp")
        strategy, optimizer = self.trainer.strategy, self.trainer.optimizers[0]
        accepts = data.clip_filter.accepts if data.clip_filter is not None else None
        batches = ConditionBatches(read_conditions(data.sources["train"], accepts),
                                   data.train_options, self.alignment_batch,
                                   seed=[data.stream_seed(), strategy.global_rank])
        params = list(self.trained_parameters().values())
        base = [group["lr"] for group in optimizer.param_groups]
        warm = [lr * (self.alignment_lr or optimizer.defaults["lr"]) / optimizer.defaults["lr"]
                for lr in base]  # the groups' lr_scales kept
        factor = linear_decay(steps, ALIGNMENT_DECAY)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # 16-mixed
        clip = self.trainer.gradient_clip_val
        for step in tqdm(range(steps), desc="alignment warm-up", unit="step",
                         disable=not self.trainer.is_global_zero):
            for group, lr in zip(optimizer.param_groups, warm):
                group["lr"] = lr * factor(step)
            with self.trainer.precision_plugin.train_step_context():
                loss = self.alignment_loss(next(batches))
            optimizer.zero_grad(set_to_none=True)
            (loss if scaler is None else scaler.scale(loss)).backward()
            for p in params:
                if p.grad is not None:
                    p.grad = strategy.reduce(p.grad, reduce_op="mean")
            if scaler is not None:
                scaler.unscale_(optimizer)
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            if self.logger is not None and (step + 1) % 10 == 0:
                self.logger.log_metrics({"train/alignment_warmup": loss.item()}, step=step)
        optimizer.zero_grad(set_to_none=True)
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr
        if self.ema is not None:  # the average starts from the warmed-up weights
            self.ema.shadow = {n: p.detach() for n, p in self.trained_parameters().items()}

    def missing_checkpoint_hint(self) -> str:
        return (": train the backbone and the six experts first (configs/expert_<emotion>.yaml)"
                " or fix model.init_args.init_weights")

    def _record_gates(self, module: EmotionMoE, args: tuple, output: torch.Tensor) -> None:
        local, global_ = module.gates(*args[:2])
        if self.routing_weight and torch.is_grad_enabled():
            self._global_gates.append(global_)  # ((b f) e), with its graph
        for name, value in (("global", global_.detach().mean(0)),
                            ("local", local.detach().mean((0, 1)))):
            self._gate_sums[name] = self._gate_sums.get(name, 0) + value
        self._gate_sums["count"] = self._gate_sums.get("count", 0) + 1

    def diffusion_step(self, batch: dict[str, Any], generator: torch.Generator | None = None,
                       cfg_dropout: bool = True) -> dict[str, torch.Tensor]:
        """The diffusion loss terms, plus the routing and alignment terms when weighted."""
        self._global_gates = []
        terms = super().diffusion_step(batch, generator, cfg_dropout)
        extra = {}
        if self._global_gates:
            extra["routing"] = self.routing_weight * self.routing_loss(batch)
        if self.alignment_weight and torch.is_grad_enabled():
            extra["alignment"] = self.alignment_weight * self.alignment_loss(batch)
        for name, value in extra.items():
            terms[name] = value
            terms["total"] = terms["total"] + value
        return terms

    def _share_targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """(b 6) the clips' emotion shares as distributions (summing to 1): cross-entropy
        targets."""
        shares = emotion_shares(batch, self.device)
        return shares / shares.sum(1, keepdim=True).clamp_min(1e-6)

    def routing_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy of the recorded global gates against the clips' emotion shares."""
        shares = self._share_targets(batch)
        losses = [-(shares.repeat_interleave(len(g) // len(shares), 0)
                    * g.clamp_min(1e-6).log()).sum(1).mean() for g in self._global_gates]
        return torch.stack(losses).mean()

    def alignment_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Squared distance of each other modality's latents, alone, to those of the clip's
        own label (shares x intensity) alone; plus ``alignment_routing_weight`` times the
        cross-entropy of the gates' emotion terms on them (:meth:`emotion_routing_loss`)."""
        inputs = batch["emotion"]
        present = inputs.presence(self.device)
        intensity = torch.as_tensor(batch["intensity"], device=self.device, dtype=torch.float32)
        label = emotion_shares(batch, self.device) * intensity[:, None]
        with torch.no_grad():
            target = self.net.encode_emotion(EmotionInputs(label=label))
        shares = self._share_targets(batch)
        losses = []
        for column, name in enumerate(MODALITIES[1:], start=1):
            rows = present[:, column]
            if rows.any():
                latents = self.net.encode_emotion(only_modality(inputs, name, present))[rows]
                loss = F.mse_loss(latents, target[rows])
                if self.alignment_routing_weight:
                    loss = loss + self.alignment_routing_weight * self.emotion_routing_loss(
                        latents, shares[rows])
                losses.append(loss)
        return torch.stack(losses).mean() if losses else target.new_zeros(())

    def emotion_routing_loss(self, latents: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
        """Mean over the MoE layers of the cross-entropy between the softmax of each layer's
        global-gate emotion term on ``latents`` (b m c) and ``shares`` (b 6, summing to 1).
        The gates' weights are held fixed: only the latents learn from it. Zero for a network
        without a learned global gate (the ablations)."""
        pooled = latents.mean(1)
        losses = [F.cross_entropy(F.linear(pooled, layer.context_gate.weight.detach(),
                                           layer.context_gate.bias.detach()).float(), shares)
                  for layer in self.net.modules()
                  if isinstance(layer, EmotionMoE) and layer.context_gate is not None]
        return torch.stack(losses).mean() if losses else pooled.new_zeros(())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._gate_sums = {}
        loss = super().training_step(batch, batch_idx)
        count = self._gate_sums.pop("count", 0)
        for kind, sums in self._gate_sums.items():
            self.log_dict({f"gates/{kind}_{emotion}": sums[i] / count
                           for i, emotion in enumerate(BASIC_EMOTIONS)},
                          batch_size=batch["frames"].shape[0])
        return loss


def only_modality(inputs: EmotionInputs, modality: str,
                  present: torch.Tensor) -> EmotionInputs:
    """The same conditions with only ``modality`` marked present (where ``present`` has it)."""
    keep = torch.zeros_like(present)
    column = MODALITIES.index(modality)
    keep[:, column] = present[:, column]
    return EmotionInputs(label=inputs.label, au=inputs.au, text=inputs.text,
                         speech=inputs.speech, present=keep)
