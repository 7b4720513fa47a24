"""Training stages: backbone (1), experts (2), gating (3), and the tiny preset's
speech-emotion recogniser (pretrained before the gating stage)."""

from moee.stages.backbone import BackboneModule
from moee.stages.base import DiffusionStage
from moee.stages.expert import ExpertModule
from moee.stages.gating import GatingModule
from moee.stages.speech_emotion import SpeechEmotionModule

__all__ = ["BackboneModule", "DiffusionStage", "ExpertModule", "GatingModule",
           "SpeechEmotionModule"]
