"""Stage 2: train one emotion expert on clips of its emotion, everything else frozen."""

from __future__ import annotations

from typing import Any

from moee.emotions import BASIC_EMOTIONS, canonical_emotion_name
from moee.stages.base import DiffusionStage


class ExpertModule(DiffusionStage):
    """Stage 2 of MoEE: expert ``i`` (and Emotion-to-Latents) learn; the U-Net stays frozen.

    The other experts are bypassed — the network runs its single-expert path,
    ``X' = X + E_i(X, C)`` — so they are neither computed nor touched. Pair it with a data
    config that keeps only this emotion's clips and enables masked noisy emotion sampling.

    Args:
        emotion: one of ``BASIC_EMOTIONS``.
        train_emotion_latents: also train Emotion-to-Latents (the paper does).
    """

    def __init__(self, *args, emotion: str = "happy", train_emotion_latents: bool = True,
                 **kwargs) -> None:
        name = canonical_emotion_name(emotion)
        if name not in BASIC_EMOTIONS:
            raise ValueError(f"an expert is trained per basic emotion "
                             f"({', '.join(BASIC_EMOTIONS)}), got {emotion!r}")
        self.emotion = name
        self.expert_index = BASIC_EMOTIONS.index(name)
        self.train_emotion_latents = train_emotion_latents
        super().__init__(*args, **kwargs)

    @property
    def trainable_groups(self) -> tuple[str, ...]:
        expert = f"expert_{self.expert_index}"
        return (expert, "emotion_latents") if self.train_emotion_latents else (expert,)

    def missing_checkpoint_hint(self) -> str:
        return (": train the backbone first (python -m moee fit --config configs/backbone.yaml)"
                " or set model.init_args.init_weights")

    def network_kwargs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {**super().network_kwargs(batch), "expert": self.expert_index}
