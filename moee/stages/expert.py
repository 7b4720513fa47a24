"""Stage 2: train emotion experts on clips of their emotion, everything else frozen."""

from __future__ import annotations

from typing import Any

import torch

from moee.emotions import BASIC_EMOTIONS, canonical_emotion_name
from moee.stages.base import DiffusionStage, emotion_shares

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

    With several experts, a compound clip (``"sadly surprised"``) goes through its components'
    experts together, weighted by the compound's shares (0.6 and 0.4) and ungated: the mixture
    the gating stage's routing term then teaches the global gate to give it. A compound's face
    is not a blend of its components' faces (sadly surprised raises the inner brows and drops
    the jaw, without surprise's raised outer brows or sadness's lip corners), and frozen experts
    that only ever saw basic clips cannot draw it however they are mixed; trained on compound
    clips, the two experts learn their parts of it from the compound's emotion latents. List
    the compounds in the data config's ``emotions`` to train them; neutral clips go through no
    expert and are refused.

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

    def condition_options(self, batch: dict[str, Any]) -> dict[str, Any]:
        expert: int | torch.Tensor = self.expert_indices[0]
        if len(self.expert_indices) > 1:
            expert = self.expert_shares(batch)
            if bool(((expert == 0) | (expert == 1)).all()):  # basic clips only: one expert each
                expert = expert.argmax(1)
        return {"expert": expert}

    def expert_shares(self, batch: dict[str, Any]) -> torch.Tensor:
        """(b 6) the share of each expert in each sample: one-hot for a basic clip, the
        compound's shares (summing to 1) for a compound clip."""
        shares = emotion_shares(batch, self.device)
        totals = shares.sum(1, keepdim=True)
        if bool((totals == 0).any()):
            raise ValueError("a batch of several experts' training holds a neutral clip, "
                             "which goes through no expert: set data.init_args.clips.emotions")
        untrained = [BASIC_EMOTIONS[i] for i in range(len(BASIC_EMOTIONS))
                     if i not in self.expert_indices and bool(shares[:, i].any())]
        if untrained:
            raise ValueError(f"a clip needs the {', '.join(untrained)} expert, which this run "
                             f"does not train: set data.init_args.clips.emotions")
        return shares / totals

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
