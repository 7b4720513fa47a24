"""Stage 2: train emotion experts on clips of their emotion, everything else frozen."""

from __future__ import annotations

from typing import Any

import torch

from moee.emotions import BASIC_EMOTIONS, canonical_emotion_name
from moee.stages.base import DiffusionStage

EMOTION_FIELD = "{emotion}"
"""Placeholder of the expert's emotion in ``export_path`` when several experts train."""


class ExpertModule(DiffusionStage):
    """Stage 2 of MoEE: expert ``i`` learns; everything else stays frozen.

    The other experts are bypassed — the network runs its single-expert path,
    ``X' = X + E_i(X, C)`` — so they are neither computed nor touched. Pair it with a data
    config that keeps only this emotion's clips and enables masked noisy emotion sampling.

    Several experts can train side by side in one run (``emotion: [angry, ..., surprised]``,
    or ``all``): each sample goes through the expert of its own clip's emotion only, so every
    expert sees exactly what its own run would, and the network is built and the data started
    once instead of six times. ``export_path`` then names each expert's file with
    ``{emotion}`` (``runs/weights/expert_{emotion}.safetensors``).

    Emotion-to-Latents stays frozen as the backbone export carries it: six experts that each
    trained their own copy could not share one at inference (loading the exports in order would
    hand every expert the last one's), and the gating stage trains it against all six at once.

    Args:
        emotion: one of ``BASIC_EMOTIONS``, a list of them, or ``all``.
    """

    def __init__(self, *args, emotion: str | list[str] = "happy", **kwargs) -> None:
        names = BASIC_EMOTIONS if emotion == "all" else \
            [emotion] if isinstance(emotion, str) else emotion
        self.emotions = tuple(dict.fromkeys(canonical_emotion_name(n) for n in names))
        wrong = [n for n in self.emotions if n not in BASIC_EMOTIONS]
        if wrong or not self.emotions:
            raise ValueError(f"an expert is trained per basic emotion "
                             f"({', '.join(BASIC_EMOTIONS)}), got {emotion!r}")
        self.expert_indices = tuple(BASIC_EMOTIONS.index(n) for n in self.emotions)
        export_path = kwargs.get("export_path")
        if len(self.emotions) > 1 and export_path and EMOTION_FIELD not in export_path:
            raise ValueError(f"several experts train: export_path needs {EMOTION_FIELD} to "
                             f"name each one's file, got {export_path!r}")
        super().__init__(*args, **kwargs)

    @property
    def trainable_groups(self) -> tuple[str, ...]:
        return tuple(f"expert_{i}" for i in self.expert_indices)

    def missing_checkpoint_hint(self) -> str:
        return (": train the backbone first (python -m moee fit --config configs/backbone.yaml)"
                " or set model.init_args.init_weights")

    def network_kwargs(self, batch: dict[str, Any]) -> dict[str, Any]:
        expert: int | torch.Tensor = self.expert_indices[0]
        if len(self.expert_indices) > 1:
            expert = batch["emotion_index"]
            if bool((expert < 0).any()):
                raise ValueError("a batch of several experts' training holds a clip that is "
                                 "not of a basic emotion: set data.init_args.emotions")
        return {**super().network_kwargs(batch), "expert": expert}

    def on_train_end(self) -> None:
        if not self.export_path:
            return
        weights = self.exported_weights()
        for index, emotion in zip(self.expert_indices, self.emotions):
            group = f".emotion.experts.{index}."
            self.export(self.export_path.replace(EMOTION_FIELD, emotion),
                        weights={k: v for k, v in weights.items()
                                 if group in k or not _is_expert(k)},
                        groups=(f"expert_{index}",))


def _is_expert(name: str) -> bool:
    return ".emotion.experts." in name
