"""Training stages: backbone (1), experts (2), gating (3)."""

from moee.stages.backbone import BackboneModule
from moee.stages.base import DiffusionStage
from moee.stages.expert import ExpertModule
from moee.stages.gating import GatingModule

__all__ = ["BackboneModule", "DiffusionStage", "ExpertModule", "GatingModule"]
