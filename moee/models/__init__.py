"""MoEE's networks: denoiser, ReferenceNet, audio and emotion encoders, VAE, and their builder."""

from moee.models.emotion_latents import EmotionInputs, EmotionToLatents
from moee.models.emotion_moe import EmotionMoE
from moee.models.moee_net import MoEENet, MoEENetConfig, parameter_group, parameter_groups
from moee.models.pretrained import MissingWeightsError, WeightSources
from moee.models.reference import ReferenceFeatures

__all__ = [
    "EmotionInputs",
    "EmotionMoE",
    "EmotionToLatents",
    "MissingWeightsError",
    "MoEENet",
    "MoEENetConfig",
    "ReferenceFeatures",
    "WeightSources",
    "parameter_group",
    "parameter_groups",
]
