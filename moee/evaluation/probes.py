"""Probe networks: small CNNs trained on SynthEmo renders that read labels back from pixels.

They stand in for the pretrained emotion, AU, landmark, SyncNet and identity models that the
metrics use on real data. Two trunks: an *expression* probe (emotion class over
``EMOTION_CLASSES``, 17 AU intensities, 68 landmarks, mouth opening, a face logit) and an
*identity* probe (an L2-normalised embedding).

:mod:`moee.evaluation.probe_training` trains them (``python -m moee synth probes --size 64``);
:func:`load_probes` reads the cache file (safetensors, keyed by renderer version and size).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from moee.data.synth.generator import RENDERER_VERSION
from moee.emotions import EMOTION_CLASSES, NUM_ACTION_UNITS
from moee.utils import atomic_path

EMBEDDING_DIM = 64
PROBE_VERSION = 2
"""Changes whenever the probes' outputs change (2: the face output)."""


def cache_path(size: int = 64, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the probes of ``size`` px live: ``$MOEE_CACHE`` or ``~/.cache/moee``."""
    root = Path(cache_dir or os.environ.get("MOEE_CACHE") or Path.home() / ".cache" / "moee")
    return root / f"synthemo_probes_{RENDERER_VERSION}_v{PROBE_VERSION}_{size}px.safetensors"


def _trunk(widths: tuple[int, ...]) -> nn.Sequential:
    """Conv-BN-ReLU blocks; every other block halves the resolution; ends at 4x4."""
    layers, cin = [], 3
    for i, cout in enumerate(widths):
        layers += [nn.Conv2d(cin, cout, 3, 2 if i % 2 == 0 else 1, 1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(cin * 16, 256),
               nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


_WIDTHS = (16, 24, 32, 48, 64, 96, 128)


class ExpressionProbe(nn.Module):
    """Emotion logits (11), AU intensities (17), landmarks (68x2), mouth opening and a face
    logit (is this a whole, sharp enough SynthEmo face at all) from pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = _trunk(_WIDTHS)
        self.head = nn.Linear(256, len(EMOTION_CLASSES) + NUM_ACTION_UNITS + 136 + 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (b 3 h w) in [-1, 1] -> dict of emotion (b 11), aus (b 17) and their logits,
        landmarks (b 68 2), mouth (b), face logit (b)."""
        out = self.head(self.trunk(x))
        e, a = len(EMOTION_CLASSES), NUM_ACTION_UNITS
        return {
            "emotion": out[:, :e],
            "au_logits": out[:, e:e + a],
            "aus": torch.sigmoid(out[:, e:e + a]),
            "landmarks": (out[:, e + a:e + a + 136] + 0.5).view(-1, 68, 2),
            "mouth": out[:, -2],
            "face": out[:, -1],
        }


class IdentityProbe(nn.Module):
    """An L2-normalised identity embedding (b, 64) from pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = _trunk(_WIDTHS)
        self.embed = nn.Linear(256, EMBEDDING_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (b 3 h w) in [-1, 1] -> (b d) unit vectors."""
        return F.normalize(self.embed(self.trunk(x)), dim=-1)


class SynthEmoProbes(nn.Module):
    """Both probes behind one interface; every method takes (N, 3, H, W) floats in [-1, 1]."""

    def __init__(self, size: int = 64):
        super().__init__()
        self.size = size
        self.expression = ExpressionProbe()
        self.identity = IdentityProbe()

    def _fit(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.shape[-2:] != (self.size, self.size):
            frames = F.interpolate(frames, size=(self.size, self.size), mode="bilinear",
                                   antialias=True, align_corners=False)
        return frames

    @torch.no_grad()
    def _expr(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.expression(self._fit(frames))

    def emotion_logits(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 11) logits over ``moee.emotions.EMOTION_CLASSES``."""
        return self._expr(frames)["emotion"]

    def action_units(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 17) AU intensities in [0, 1] (order of ``ACTION_UNITS``)."""
        return self._expr(frames)["aus"]

    def landmarks(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 68, 2) iBUG landmarks (x, y) in [0, 1] of the image."""
        return self._expr(frames)["landmarks"]

    def mouth_opening(self, frames: torch.Tensor) -> torch.Tensor:
        """(N,) inner-lip gap over mouth width (see ``mouth_opening_from_landmarks``)."""
        return self._expr(frames)["mouth"]

    def face_probability(self, frames: torch.Tensor) -> torch.Tensor:
        """(N,) probability that a frame is a face at all: noise, heavy blur, scrambled or
        off-centre crops score near 0 (trained on such negatives of ground-truth renders)."""
        return self._expr(frames)["face"].sigmoid()

    @torch.no_grad()
    def identity_embedding(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 64) unit-length identity embeddings; cosine similarity compares people."""
        return self.identity(self._fit(frames))


def save_probes(probes: SynthEmoProbes, metrics: dict[str, float],
                cache_dir: str | os.PathLike | None = None) -> Path:
    """Write probes and their held-out metrics to the cache file (atomically); return its path."""
    path = cache_path(probes.size, cache_dir)
    with atomic_path(path) as tmp:
        save_file(probes.state_dict(), str(tmp), metadata={
            "renderer_version": RENDERER_VERSION, "size": str(probes.size),
            "metrics": json.dumps(metrics)})
    return path


def load_probes(size: int = 64, cache_dir: str | os.PathLike | None = None) -> SynthEmoProbes:
    """The trained probes for ``size`` px frames (eval mode), from the cache.

    Raises FileNotFoundError naming the command to run when the cache is missing.
    """
    path = cache_path(size, cache_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"no SynthEmo probes at {path}; run `python -m moee synth probes --size {size}`")
    probes = SynthEmoProbes(size)
    probes.load_state_dict(load_file(str(path)))
    return probes.eval()


def probe_metrics(size: int = 64, cache_dir: str | os.PathLike | None = None) -> dict[str, float]:
    """The held-out metrics stored with the cached probes."""
    with safe_open(str(cache_path(size, cache_dir)), "pt") as handle:
        return json.loads(handle.metadata()["metrics"])
