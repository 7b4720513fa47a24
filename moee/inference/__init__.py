"""Inference: animate a portrait with speech under an emotion condition.

* :class:`MoEEPipeline` — clip-wise sampling with motion frames, any emotion form;
* :mod:`moee.inference.sampling` — samplers, classifier-free guidance, sampling settings;
* :mod:`moee.inference.inputs`, :mod:`moee.inference.outputs` — checked inputs, the video;
* :mod:`moee.inference.portrait` — any image → one face crop, and pasting results back;
* :mod:`moee.inference.conditions` — emotion conditions and timelines as network inputs;
* :mod:`moee.inference.lightning` — ``python -m moee predict`` (jobs files, DDP);
* :mod:`moee.inference.animate` — ``python -m moee animate`` (one video).
"""

from moee.inference.conditions import EmotionTrack, Routing
from moee.inference.inputs import prepare_inputs
from moee.inference.outputs import Animation
from moee.inference.pipeline import MoEEPipeline, load_stage_weights
from moee.inference.portrait import InputError, PortraitSettings
from moee.inference.sampling import Guidance, SamplerSettings

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
