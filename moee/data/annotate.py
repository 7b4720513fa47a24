"""Per-clip annotations made while preparing shards: AU intensities and text descriptions.

AU extraction is pluggable through the :class:`AUExtractor` protocol. With weights, a
:class:`TorchScriptAUExtractor` runs an exported ME-GraphAU / LibreFace-style network on the
face crops; without, :class:`NoAUExtractor` gives zeros, warns once, and the clips are marked
``meta.extra["au_source"] = "none"`` so the loader reports their AU channel as absent.
Text descriptions are paraphrased from the label and the AUs by templates
(:func:`describe_emotion`); ``load_describer("pkg.module:function")`` plugs in an external
model (e.g. a vision-language model) instead.
"""

from __future__ import annotations

import importlib
import logging
import os
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from moee.emotions import ACTION_UNITS, NEUTRAL, parse_emotion

log = logging.getLogger(__name__)

NO_AU_SOURCE = "none"


class AUExtractor(Protocol):
    """Estimates ``(T, 17)`` AU intensities in [0, 1] (``ACTION_UNITS`` order) for a clip."""

    name: str
    """Recorded as ``meta.extra["au_source"]``; ``"none"`` means the AUs are placeholders."""

    def __call__(self, frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """AUs of ``(T, H, W, 3) uint8`` face crops with their ``(T, 68, 2)`` landmarks."""
        ...


class NoAUExtractor:
    """Zeros for every AU, with one warning: for data sets prepared without an AU model."""

    name = NO_AU_SOURCE

    def __init__(self) -> None:
        self._warned = False

    def __call__(self, frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """``(T, 17)`` zeros."""
        if not self._warned:
            log.warning("no AU model given (--au_model): AU intensities are zeros and the clips "
                        "are marked au_source='none'")
            self._warned = True
        return np.zeros((len(frames), len(ACTION_UNITS)), dtype=np.float32)


ME_GRAPHAU_BP4D = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17",
                   "AU23", "AU24")
"""Output order of ME-GraphAU trained on BP4D (AU14 and AU24 are not MoEE AUs; dropped)."""


class TorchScriptAUExtractor:
    """An exported AU network (``torch.export`` ``.pt2`` or TorchScript ``.pt``):
    ``(N, 3, S, S)`` ImageNet-normalised faces in,
    ``(N, len(au_names))`` AU scores in [0, 1] out (probabilities or scaled intensities).

    Outputs are mapped into MoEE's 17 AUs by name; AUs the network lacks stay 0.
    """

    def __init__(self, weights: str | os.PathLike, au_names: tuple[str, ...] = ME_GRAPHAU_BP4D,
                 input_size: int = 224, batch_size: int = 32):
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"AU model {str(weights)!r} not found: export ME-GraphAU or LibreFace with "
                "torch.export (.pt2) or TorchScript (.pt) and give its path")
        if str(weights).endswith(".pt2"):
            self.model = torch.export.load(str(weights)).module()
        else:
            self.model = torch.jit.load(str(weights), map_location="cpu").eval()
        self.name = f"torchscript:{os.path.basename(weights)}"
        self.columns = [(i, ACTION_UNITS.index(au)) for i, au in enumerate(au_names)
                        if au in ACTION_UNITS]
        self.input_size = input_size
        self.batch_size = batch_size
        self._mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self._std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """``(T, 17)`` AU intensities of the face crops."""
        out = np.zeros((len(frames), len(ACTION_UNITS)), dtype=np.float32)
        for lo in range(0, len(frames), self.batch_size):
            batch = np.stack([cv2.resize(f, (self.input_size, self.input_size))
                              for f in frames[lo : lo + self.batch_size]])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)
            scores = self.model((x - self._mean) / self._std).float().clamp(0, 1).numpy()
            for src, dst in self.columns:
                out[lo : lo + len(batch), dst] = scores[:, src]
        return out


def make_au_extractor(weights: str | os.PathLike | None) -> AUExtractor:
    """The exported-model extractor for ``weights``, or :class:`NoAUExtractor` when ``None``."""
    return NoAUExtractor() if weights is None else TorchScriptAUExtractor(weights)


def expression_score(emotion: str, aus: np.ndarray) -> float:
    """How well a clip's mean AUs match its label's prototype (cosine, 1 for neutral)."""
    if emotion == NEUTRAL:
        return 1.0
    prototype = np.asarray(parse_emotion(emotion).au_vector(), dtype=np.float32)
    mean = aus.mean(axis=0)
    norm = float(np.linalg.norm(prototype) * np.linalg.norm(mean))
    return float(prototype @ mean) / norm if norm > 0 else 0.0


AU_PHRASES: dict[str, str] = {
    "AU1": "inner brows raised", "AU2": "outer brows raised", "AU4": "brows lowered",
    "AU5": "upper lids raised", "AU6": "cheeks raised", "AU7": "lids tightened",
    "AU9": "nose wrinkled", "AU10": "upper lip raised", "AU12": "lip corners pulled up",
    "AU15": "lip corners pulled down", "AU16": "lower lip pushed down", "AU17": "chin raised",
    "AU20": "lips stretched", "AU23": "lips tightened", "AU25": "lips parted",
    "AU26": "jaw dropped", "AU45": "eyes blinking",
}
"""How each AU reads in a description."""

_TEMPLATES = (
    "A person speaking with {degree}{emotion} expression{detail}.",
    "{Degree}{emotion} face while talking{detail}.",
    "Someone talks and looks {degree_adj}{emotion_adj}{detail}.",
)


def describe_emotion(emotion: str, intensity: float, aus: np.ndarray | None = None,
                     variant: str = "") -> str:
    """A one-sentence description from the label, its intensity and the strongest AUs.

    ``variant`` (e.g. the clip key) picks one of several phrasings, so descriptions vary.
    """
    if emotion == NEUTRAL:
        degree, degree_adj = "a ", ""
        emotion_word = "neutral"
    else:
        degree_adj = "slightly " if intensity < 0.4 else "very " if intensity > 0.85 else ""
        degree = "a " + degree_adj if degree_adj else ("an " if emotion[0] in "aeiou" else "a ")
        emotion_word = emotion
    detail = ""
    if aus is not None and aus.size:
        mean = aus.mean(axis=0)
        strongest = [ACTION_UNITS[i] for i in np.argsort(-mean)[:3] if mean[i] > 0.3]
        if strongest:
            detail = ", " + " and ".join(AU_PHRASES[au] for au in strongest)
    template = _TEMPLATES[zlib.crc32(variant.encode()) % len(_TEMPLATES)]
    text = template.format(degree=degree, Degree=degree.capitalize(), emotion=emotion_word,
                           degree_adj=degree_adj, emotion_adj=emotion_word, detail=detail)
    return text[0].upper() + text[1:]


Describer = Callable[[np.ndarray, dict[str, Any]], str]
"""An external describer: ``(frames (T, H, W, 3) uint8, meta dict) -> description``."""


def load_describer(spec: str) -> Describer:
    """Import ``"package.module:function"``, an external (e.g. vision-language) describer."""
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"describer {spec!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module), name)
