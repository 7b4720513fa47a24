"""Inference: animate a portrait with speech under an emotion condition.

* :class:`MoEEPipeline` — clip-wise sampling with motion frames, guidance, any emotion form;
* :mod:`moee.inference.portrait` — any image → one face crop, and pasting results back;
* :mod:`moee.inference.conditions` — emotion conditions and timelines as network inputs;
* :mod:`moee.inference.lightning` — ``python -m moee predict`` (jobs files, DDP);
* :mod:`moee.inference.animate` — ``python -m moee animate`` (one video).
"""

from moee.inference.conditions import EmotionTrack, Routing
from moee.inference.pipeline import (
    Animation,
    Guidance,
    MoEEPipeline,
    SamplerSettings,
    load_stage_weights,
    prepare_inputs,
)
from moee.inference.portrait import InputError, PortraitSettings

__all__ = [
    "Animation",
    "EmotionTrack",
    "Guidance",
    "InputError",
    "MoEEPipeline",
    "PortraitSettings",
    "Routing",
    "SamplerSettings",
    "load_stage_weights",
    "prepare_inputs",
]
