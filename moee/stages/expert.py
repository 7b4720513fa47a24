"""Stage 2: train one emotion expert on clips of its emotion, everything else frozen."""

from __future__ import annotations

from typing import Any

from moee.emotions import BASIC_EMOTIONS, canonical_emotion_name
from moee.stages.base import DiffusionStage


class ExpertModule(DiffusionStage):
    """Stage 2 of MoEE: expert ``i`` learns; everything else stays frozen.

    The other experts are bypassed — the network runs its single-expert path,
    ``X' = X + E_i(X, C)`` — so they are neither computed nor touched. Pair it with a data
    config that keeps only this emotion's clips and enables masked noisy emotion sampling.

    Emotion-to-Latents stays frozen as the backbone export carries it: six experts that each
    trained their own copy could not share one at inference (loading the exports in order would
    hand every expert the last one's), and the gating stage trains it against all six at once.

    Args:
        emotion: one of ``BASIC_EMOTIONS``.
    """

    def __init__(self, *args, emotion: str = "happy", **kwargs) -> None:
        name = canonical_emotion_name(emotion)
        if name not in BASIC_EMOTIONS:
            raise ValueError(f"an expert is trained per basic emotion "
                             f"({', '.join(BASIC_EMOTIONS)}), got {emotion!r}")
        self.emotion = name
        self.expert_index = BASIC_EMOTIONS.index(name)
        super().__init__(*args, **kwargs)

    @property
    def trainable_groups(self) -> tuple[str, ...]:
        return (f"expert_{self.expert_index}",)

    def missing_checkpoint_hint(self) -> str:
        return (": train the backbone first (python -m moee fit --config configs/backbone.yaml)"
                " or set model.init_args.init_weights")

    def network_kwargs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {**super().network_kwargs(batch), "expert": self.expert_index}
