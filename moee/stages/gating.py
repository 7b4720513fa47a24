"""Stage 3: learn the local and global gates that mix the frozen emotion experts."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from moee.emotions import BASIC_EMOTIONS, NUM_EXPERTS
from moee.models.emotion_latents import MODALITIES, EmotionInputs
from moee.models.emotion_moe import EmotionMoE
from moee.stages.base import DiffusionStage, emotion_inputs, emotion_shares

log = logging.getLogger(__name__)


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
        train_label_path: also train the label path (an ablation: the experts then see
            latents they were not trained on).
        alignment_warmup: the first this many steps train the alignment term alone (weight 1),
            without denoising: several times cheaper a step, they give the AU, text and speech
            paths the examples that the stage's few denoising steps cannot.
        prototype_margin: start every MoE layer's global-gate emotion term as a router to the
            nearest basic label's latents (:meth:`EmotionMoE.route_by_prototypes`), a label
            on its prototype preferring its own expert by this many logits; ``None`` keeps the
            loaded or random gate. Applied once, to the weights ``init_weights`` loaded (a
            resumed run restores its own gates over it).
        speech_emotion_weight: weight of the cross-entropy between a linear head on the
            speech-emotion encoder's pooled features and the clip's emotion shares, for every
            sample whose audio the encoder hears (the warm-up included): the tiny preset's
            random stand-in then learns to hear tone, as its real counterpart (an
            emotion-recognition HuBERT) was trained to, and learns from this term alone (the
            other terms reach only the speech query MLP, as with a frozen pretrained encoder).
            The head is this stage's training aid, not part of the network, and is not
            exported. Ignored (logged) when the speech encoder is pretrained and frozen.
        speech_emotion_lr_scale: learning-rate scale of the speech encoder and its head.
    """

    def __init__(self, *args, routing_weight: float = 0.0, alignment_weight: float = 0.0,
                 train_label_path: bool = False, alignment_warmup: int = 0,
                 prototype_margin: float | None = None, speech_emotion_weight: float = 0.0,
                 speech_emotion_lr_scale: float = 1.0, **kwargs) -> None:
        if not speech_emotion_lr_scale > 0:
            raise ValueError(f"speech_emotion_lr_scale must be positive, got "
                             f"{speech_emotion_lr_scale}")
        self.train_label_path = train_label_path
        super().__init__(*args, **kwargs)
        self.routing_weight = routing_weight
        self.alignment_weight = alignment_weight
        self.alignment_warmup = alignment_warmup
        if prototype_margin is not None:
            self.route_by_prototypes(prototype_margin)
        self._gate_sums: dict[str, torch.Tensor] = {}
        self._global_gates: list[torch.Tensor] = []
        for module in self.net.modules():
            if isinstance(module, EmotionMoE):
                module.register_forward_hook(self._record_gates)
        self.speech_emotion_weight = speech_emotion_weight
        self.speech_emotion_lr_scale = speech_emotion_lr_scale
        self.speech_emotion_head = None
        self._speech_features: torch.Tensor | None = None
        encoder = self.net.emotion_to_latents.speech_encoder
        if speech_emotion_weight and not any(p.requires_grad for p in encoder.parameters()):
            log.info("speech_emotion_weight ignored: the speech-emotion encoder is pretrained "
                     "and frozen")
        elif speech_emotion_weight:
            self.speech_emotion_head = nn.Linear(encoder.hidden_size, NUM_EXPERTS)
            encoder.register_forward_hook(self._record_speech_features)

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

    def _optimizer_groups(self) -> list[dict[str, Any]]:
        """The network's groups; with the speech-emotion term, the speech encoder and the head
        as one more group at ``speech_emotion_lr_scale``."""
        groups = super()._optimizer_groups()
        if self.speech_emotion_head is None:
            return groups
        encoder = list(self.net.emotion_to_latents.speech_encoder.parameters())
        speech = {id(p) for p in encoder}
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) not in speech]
        return [*(g for g in groups if g["params"]),
                {"params": [*encoder, *self.speech_emotion_head.parameters()],
                 "lr_scale": self.speech_emotion_lr_scale}]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        head = {k: v for k, v in checkpoint["state_dict"].items()
                if k.startswith("speech_emotion_head.")}
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"].update(head)

    def on_fit_start(self) -> None:
        max_steps = self.trainer.max_steps
        if 0 < max_steps <= self.alignment_warmup:
            log.warning("alignment_warmup (%d) fills all of trainer.max_steps (%d): this run "
                        "trains the AU, text and speech paths only, and never the gates",
                        self.alignment_warmup, max_steps)

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

    def _record_speech_features(self, module: nn.Module, args: tuple,
                                output: torch.Tensor) -> torch.Tensor:
        """Keep the encoder's features for the head, and pass them on detached: the encoder
        learns from the head alone, the speech query MLP learns where its features belong."""
        if torch.is_grad_enabled():
            self._speech_features = output  # (b c), with its graph
        return output.detach()

    def diffusion_step(self, batch: dict[str, Any], generator: torch.Generator | None = None,
                       cfg_dropout: bool = True) -> dict[str, torch.Tensor]:
        """The diffusion loss terms, plus the routing, alignment and speech-emotion terms when
        weighted."""
        self._global_gates = []
        self._speech_features = None
        terms = super().diffusion_step(batch, generator, cfg_dropout)
        extra = {}
        if self._global_gates:
            extra["routing"] = self.routing_weight * self.routing_loss(batch)
        if self.alignment_weight and torch.is_grad_enabled():
            extra["alignment"] = self.alignment_weight * self.alignment_loss(batch)
        speech = self.speech_emotion_loss(batch)
        if speech is not None:
            extra["speech_emotion"] = self.speech_emotion_weight * speech
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

    def speech_emotion_loss(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """Cross-entropy of the speech-emotion head on the features the encoder computed last
        in this step (every sample's audio) against the clips' emotion shares; ``None`` when
        the term is off or the encoder heard nothing with gradients this step."""
        features, self._speech_features = self._speech_features, None
        if self.speech_emotion_head is None or features is None:
            return None
        log_probs = self.speech_emotion_head(features).log_softmax(1)
        return -(self._share_targets(batch) * log_probs).sum(1).mean()

    def alignment_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Squared distance of each other modality's latents, alone, to those of the clip's
        own label (shares x intensity) alone."""
        inputs = emotion_inputs(batch)
        present = inputs.presence(self.device)
        intensity = torch.as_tensor(batch["intensity"], device=self.device, dtype=torch.float32)
        label = emotion_shares(batch, self.device) * intensity[:, None]
        with torch.no_grad():
            target = self.net.encode_emotion(EmotionInputs(label=label))
        losses = []
        for column, name in enumerate(MODALITIES[1:], start=1):
            rows = present[:, column]
            if rows.any():
                latents = self.net.encode_emotion(only_modality(inputs, name, present))
                losses.append(F.mse_loss(latents[rows], target[rows]))
        return torch.stack(losses).mean() if losses else target.new_zeros(())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.global_step < self.alignment_warmup:
            self._speech_features = None
            loss = self.alignment_loss(batch)
            if not loss.requires_grad:  # the batch is conditioned by labels alone
                return None
            self.log("train/alignment_warmup", loss, batch_size=batch["frames"].shape[0])
            speech = self.speech_emotion_loss(batch)
            if speech is not None:
                self.log("train/speech_emotion", speech, batch_size=batch["frames"].shape[0])
                loss = loss + self.speech_emotion_weight * speech
            self.log("loss", loss, prog_bar=True, logger=False, batch_size=batch["frames"].shape[0])
            return loss
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
