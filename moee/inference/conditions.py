"""Emotion conditions at inference: what reaches the network, and timelines over clips.

Every user condition goes through :func:`moee.emotions.parse_emotion`, then:

=====================  ===========================================  =========================
condition              Emotion-to-Latents input (``present``)       Emotion MoE routing
=====================  ===========================================  =========================
basic ``sad@0.4``      label × intensity                            single expert ``i``
compound               label (compound shares × intensity)          its two experts ``shares``
mix ``happy:.7,...``   label (the mix)                              ``weights`` = the mix
neutral                zero label                                   learned gates
``AU6:0.8,...``        AUs                                          learned gates
``text:...``           T5 text                                      learned gates
``speech``             speech-emotion encoder on the clip's audio   learned gates, or the
                                                                    expert of the emotion heard
=====================  ===========================================  =========================

A label names its experts, and reaches them as they were trained (stage 2): a basic label its
one expert, a compound label its two at the compound's shares, without gates
(``EmotionMoE.forward(expert=shares)``). The learned gates route what names no emotion (AUs,
a text, the speech), and a user's mix keeps the local gates with its weights. With
``SamplerSettings.speech_routing = "heard"`` (the tiny preset's) the pipeline sends each
clip's speech latents through the one expert of the basic emotion its recogniser hears in
that clip instead (:meth:`~moee.inference.pipeline.MoEEPipeline.heard_routing`).

A timeline (``"0s:neutral,3s:happy"``) gives each clip a blend of its entries
(:meth:`EmotionTrack.blend`): around each switch the new entry's share ramps linearly from 0 to
1 over ``transition`` seconds centred on the switch time. Emotion latents are blended with those
shares; the routing is the entries' own when they agree, else an explicit expert mixture of the
entries' basic-emotion weights (uniform for entries that have none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moee.emotions import (
    NUM_ACTION_UNITS,
    NUM_EXPERTS,
    EmotionCondition,
    parse_emotion_timeline,
)
from moee.models.emotion_latents import MODALITIES, EmotionInputs

_LABEL_KINDS = ("neutral", "basic", "compound", "mixture")


@dataclass(frozen=True)
class Routing:
    """How the Emotion MoE mixes its experts: one ``expert``, expert ``shares`` (6) without
    gates, explicit ``weights`` (6) in place of the global gate, or none of them (the learned
    local and global gates)."""

    expert: int | None = None
    shares: tuple[float, ...] | None = None
    weights: tuple[float, ...] | None = None

    @classmethod
    def of(cls, condition: EmotionCondition) -> Routing:
        """The routing a condition asks for on its own."""
        if condition.kind == "basic":
            return cls(expert=condition.expert)
        if condition.kind == "compound":
            return cls(shares=tuple(w / sum(condition.weights) for w in condition.weights))
        if condition.kind == "mixture":
            return cls(weights=tuple(condition.weights))
        return cls()

    @property
    def kind(self) -> str:
        """``"expert"``, ``"shares"``, ``"weights"`` or ``"gates"``: which routing this is."""
        return "expert" if self.expert is not None else "shares" if self.shares is not None \
            else "weights" if self.weights is not None else "gates"


def batch_routing(routings: tuple[Routing, ...] | list[Routing], device: torch.device) -> dict:
    """``expert`` and ``weights`` arguments of ``MoEENet.forward`` for a batch of videos, one
    routing each: one expert (an int when all agree, else (b,)), expert shares (b e), explicit
    mixtures (b e), or the learned gates. Raises ``ValueError`` when the videos are routed in
    different ways."""
    kinds = {r.kind for r in routings}
    if len(kinds) > 1:
        raise ValueError(f"videos sampled together must be routed alike, got {sorted(kinds)}: "
                         "sample single-expert, compound, mixture and gated conditions in "
                         "separate batches")
    kind = kinds.pop()
    if kind == "expert":
        experts = [r.expert for r in routings]
        same = len(set(experts)) == 1
        return {"expert": experts[0] if same else torch.tensor(experts, device=device),
                "weights": None}
    if kind == "shares":
        return {"expert": torch.tensor([r.shares for r in routings], device=device),
                "weights": None}
    if kind == "weights":
        return {"expert": None, "weights": torch.tensor([r.weights for r in routings],
                                                        device=device)}
    return {"expert": None, "weights": None}


def expert_shares(condition: EmotionCondition) -> tuple[float, ...]:
    """Basic-emotion weights of a condition for an explicit mixture (uniform when it has none)."""
    if sum(condition.weights) > 0:
        return tuple(condition.weights)
    return (1.0 / NUM_EXPERTS,) * NUM_EXPERTS


def emotion_inputs(
    condition: EmotionCondition, speech: torch.Tensor, device: torch.device
) -> EmotionInputs:
    """One condition as a batch of one :class:`EmotionInputs` (see the module table).

    ``speech`` is the clip's 16 kHz audio ``(1, f * 640)``, used only by ``speech`` conditions.
    """
    present = dict.fromkeys(MODALITIES, False)
    label = torch.zeros(1, NUM_EXPERTS, device=device)
    au = torch.zeros(1, NUM_ACTION_UNITS, device=device)
    if condition.kind in _LABEL_KINDS:  # as the experts are trained: the label alone
        present["label"] = True
        label = torch.tensor([condition.label_vector()], device=device)
    elif condition.kind == "au":
        present["au"] = True
        au = torch.tensor([condition.au_vector()], device=device)
    else:
        present[condition.kind] = True
    return EmotionInputs(
        label=label,
        au=au,
        text=[condition.text],
        speech=speech.to(device),
        present=torch.tensor([[present[m] for m in MODALITIES]], device=device),
    )


class EmotionTrack:
    """An emotion condition over time: one condition, or a timeline of them.

    Args:
        entries: ``(start seconds, condition)`` sorted by time, the first at 0 s.
        transition: seconds over which one entry blends into the next (0: hard switches).
    """

    def __init__(self, entries: list[tuple[float, EmotionCondition]], transition: float = 1.0):
        if not entries or entries[0][0] != 0.0:
            raise ValueError("an emotion track needs an entry at 0 s")
        if transition < 0:
            raise ValueError(f"transition must be ≥ 0 seconds, got {transition}")
        self.entries = entries
        self.transition = transition

    @classmethod
    def parse(cls, spec: str | EmotionCondition, transition: float = 1.0) -> EmotionTrack:
        """A track from a condition or a spec: ``"sad@0.5"`` or ``"0s:neutral,3s:happy"``."""
        if isinstance(spec, EmotionCondition):
            return cls([(0.0, spec)], transition)
        return cls(parse_emotion_timeline(spec), transition)

    @property
    def conditions(self) -> list[EmotionCondition]:
        """The conditions of the entries, in time order."""
        return [condition for _, condition in self.entries]

    def _arrival(self, index: int, seconds: float) -> float:
        """How far entry ``index`` has taken over at ``seconds``: 0 → 1 around its start."""
        start = self.entries[index][0]
        if index == 0:
            return 1.0
        if self.transition == 0:
            return float(seconds >= start)
        return min(max((seconds - start) / self.transition + 0.5, 0.0), 1.0)

    def blend(self, seconds: float) -> list[tuple[int, float]]:
        """``(entry index, share)`` of every entry active at ``seconds``; shares sum to 1."""
        arrivals = [self._arrival(i, seconds) for i in range(len(self.entries))] + [0.0]
        shares = [(i, arrivals[i] - arrivals[i + 1]) for i in range(len(self.entries))]
        return [(i, share) for i, share in shares if share > 0]

    def routing(self, blend: list[tuple[int, float]]) -> Routing:
        """The Emotion MoE routing of a blend (see the module docstring)."""
        routings = {Routing.of(self.entries[i][1]) for i, _ in blend}
        if len(routings) == 1:
            return routings.pop()
        mixed = torch.zeros(NUM_EXPERTS, dtype=torch.float64)
        for i, share in blend:
            mixed += share * torch.tensor(expert_shares(self.entries[i][1]), dtype=torch.float64)
        return Routing(weights=tuple(mixed.tolist()))

