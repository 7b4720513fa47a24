"""Stage 3: learn the local and global gates that mix the frozen emotion experts."""

from __future__ import annotations

from typing import Any

import torch

from moee.emotions import BASIC_EMOTIONS
from moee.models.emotion_moe import EmotionMoE
from moee.stages.base import DiffusionStage


class GatingModule(DiffusionStage):
    """Stage 3 of MoEE: gates φ, ω (and Emotion-to-Latents) learn on compound and basic data.

    ``init_weights`` lists the backbone export and the six expert exports. The mean global
    gate weight per expert and the mean local gate activation are logged every step
    (``gates/global_<emotion>``, ``gates/local_<emotion>``).
    """

    trainable_groups = ("gates", "emotion_latents")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gate_sums: dict[str, torch.Tensor] = {}
        for module in self.net.modules():
            if isinstance(module, EmotionMoE):
                module.register_forward_hook(self._record_gates)

    def missing_checkpoint_hint(self) -> str:
        return (": train the backbone and the six experts first (configs/expert_<emotion>.yaml)"
                " or fix model.init_args.init_weights")

    @torch.no_grad()
    def _record_gates(self, module: EmotionMoE, args: tuple, kwargs_or_output) -> None:
        x = args[0]
        global_gate = module.global_gate(x.mean(1)).softmax(-1).mean(0)
        local_gate = module.local_gate(x).sigmoid().mean((0, 1))
        for name, value in (("global", global_gate), ("local", local_gate)):
            self._gate_sums[name] = self._gate_sums.get(name, 0) + value
        self._gate_sums["count"] = self._gate_sums.get("count", 0) + 1

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._gate_sums = {}
        loss = super().training_step(batch, batch_idx)
        count = self._gate_sums.pop("count", 0)
        for kind, sums in self._gate_sums.items():
            self.log_dict({f"gates/{kind}_{emotion}": sums[i] / count
                           for i, emotion in enumerate(BASIC_EMOTIONS)},
                          batch_size=batch["frames"].shape[0])
        return loss
