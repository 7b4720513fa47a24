"""What the SynthEmo probes read in a whole video: is it a face, whose, which emotion, what lips.

An emotion score alone is easy to fool: a probe that must pick one of 11 emotions picks one for
colour noise too. :class:`ProbeJudge` therefore reads every video against the portraits of all
the people it could show, and a video *reads as* an emotion only when the probes see a face in
it (their face output, trained on noise, blur, scrambles and crops of real renders), the
nearest portrait by identity embedding is the one it was made from, and the frame-averaged
emotion is the one asked for. Lip motion is scored apart, as the correlation of the probes'
mouth opening with the ground-truth mouth track of the speech.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from moee.data.batch import from_numpy_frames
from moee.emotions import EMOTION_CLASSES
from moee.evaluation.probes import SynthEmoProbes

FACE_THRESHOLD = 0.5
"""Mean face probability above which a video counts as showing a face."""


@dataclass
class VideoReading:
    """The probes' reading of one video.

    Attributes:
        face: mean probability over frames that the frame is a face.
        probabilities: (11,) frame-averaged emotion probabilities, ``EMOTION_CLASSES`` order.
        identity: the portrait identity nearest to the video's mean identity embedding.
        similarity: cosine similarity of that embedding to the video's own portrait.
        mouth: (T,) mouth opening per frame.
        action_units: (17,) frame-averaged AU intensities, ``ACTION_UNITS`` order.
    """

    face: float
    probabilities: np.ndarray
    identity: str
    similarity: float
    mouth: np.ndarray
    action_units: np.ndarray

    @property
    def is_face(self) -> bool:
        """Whether the probes see a face in the video."""
        return self.face >= FACE_THRESHOLD

    @property
    def emotion(self) -> str | None:
        """The emotion the probes read, ``None`` when the video is not a face."""
        return EMOTION_CLASSES[int(self.probabilities.argmax())] if self.is_face else None


class ProbeJudge:
    """Reads videos against the portraits of every identity they could show.

    Args:
        probes: trained SynthEmo probes.
        portraits: identity -> portrait frame ``(H, W, 3) uint8``.
    """

    def __init__(self, probes: SynthEmoProbes, portraits: dict[str, np.ndarray]) -> None:
        self.probes = probes.eval()
        self.names = list(portraits)
        portrait_images = from_numpy_frames(np.stack(list(portraits.values())))
        self.embeddings = probes.identity_embedding(portrait_images)

    @torch.no_grad()
    def read(self, frames: np.ndarray, portrait: str) -> VideoReading:
        """Read a video ``(T, H, W, 3) uint8`` made from the portrait of ``portrait``."""
        images = from_numpy_frames(frames)
        embedding = torch.nn.functional.normalize(
            self.probes.identity_embedding(images).mean(0), dim=0)
        similarities = self.embeddings @ embedding
        return VideoReading(
            face=float(self.probes.face_probability(images).mean()),
            probabilities=self.probes.emotion_logits(images).softmax(-1).mean(0).numpy(),
            identity=self.names[int(similarities.argmax())],
            similarity=float(similarities[self.names.index(portrait)]),
            mouth=self.probes.mouth_opening(images).numpy(),
            action_units=self.probes.action_units(images).mean(0).numpy(),
        )

    def reads_as(self, reading: VideoReading, emotion: str, portrait: str) -> bool:
        """Whether a video reads as ``emotion`` on the face of ``portrait``."""
        return reading.is_face and reading.identity == portrait and reading.emotion == emotion


def lip_sync_correlation(mouths: list[np.ndarray], targets: list[np.ndarray]) -> float:
    """Pearson r of generated and ground-truth mouth tracks, each video centred on its own
    mean (a still video's flat track contributes nothing and scores 0)."""
    generated = np.concatenate([m - m.mean() for m in mouths])
    truth = np.concatenate([t - t.mean() for t in targets])
    scale = np.linalg.norm(generated) * np.linalg.norm(truth)
    return float(generated @ truth / scale) if scale > 1e-12 else 0.0
