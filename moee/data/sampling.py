"""From a decoded clip to training samples: windows, motion frames, audio, MNS and jitter.

A sample is a window of ``num_frames`` frames of one clip with everything the stages need
(see :mod:`moee.data.batch` for the batch layout):

* the window's audio at 16 kHz with :data:`AUDIO_CONTEXT` frames of context on each side,
  zero-padded at the clip's edges: frame ``k`` owns samples ``[k * 640, (k + 1) * 640)``;
* the :data:`MOTION_FRAMES` frames before the window (the first frame repeated at clip start);
* a reference frame: a random frame of the same clip, or — masked noisy emotion sampling
  (MNS), with probability ``mns_prob`` — a frame of the same person in another emotion
  (the sample's ``mnsref.npy`` extra) with its mouth masked, which then also stands in for the
  motion frames (they would show the clip's own expression, which MNS is there to hide);
* the emotion condition in every modality the clip has, jittered with probability
  ``jitter_prob`` (intensity and weight noise, random dropout of the label / AU / text channels).

All randomness comes from one NumPy generator per data-loader worker, seeded from
``(seed, rank, worker)``, so a run is reproducible for a fixed worker layout; evaluation
samples are seeded by their key and do not depend on the layout at all.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from moee.data.faces import mouth_mask
from moee.data.media import SAMPLES_PER_FRAME, normalize_track
from moee.data.shards import Clip
from moee.emotions import ACTION_UNITS, BASIC_EMOTIONS, NEUTRAL

log = logging.getLogger(__name__)

MOTION_FRAMES = 2
"""Frames before the window that seed temporal continuity (the previous clip's last frames)."""
AUDIO_CONTEXT = 2
"""Frames of audio context on each side of the window (wav2vec features are windowed ±2)."""
SPEECH_FRAMES = 16
"""Frames of audio (0.64 s) the speech-emotion encoder hears for a window (:func:`speech_window`):
the tone of a phrase rather than of a syllable, the same in training and in animation."""
MODALITIES = ("label", "au", "text", "speech")
"""The emotion modalities, in the order of ``emotion["present"]``."""
MNS_REFERENCE = "mnsref.npy"
MNS_LANDMARKS = "mnslmk.npy"
NO_SOURCE = "none"
"""``meta.extra["au_source"]`` / ``["label_source"]`` value of a channel the clip lacks."""
MASK_FILL = 128
"""uint8 grey of masked mouth pixels (0.0 in [-1, 1] once normalised)."""
_EXPRESSION_AUS = np.array([au not in ("AU25", "AU26", "AU45") for au in ACTION_UNITS])
"""The AUs that show the emotion (speech moves AU25/AU26, blinks AU45)."""


@dataclass(frozen=True)
class SamplingOptions:
    """How samples are cut from clips.

    ``MoEEDataModule`` trains with these options; its validation and test take ``num_frames``,
    ``image_size`` and ``mask_dilation`` from them (:meth:`evaluation`: centred windows, no MNS
    or jitter).

    Attributes:
        num_frames: frames per window (the clip length the denoiser sees).
        image_size: output side in pixels; ``None`` keeps the shard's size.
        windows_per_clip: windows drawn from each decoded clip (decoding is the costly part).
        random_window: draw window starts and reference frames at random (training); otherwise
            the centred window and its middle frame as reference (evaluation, reproducible).
        mns_prob: probability of a masked noisy emotion reference, for clips that have one.
        mns_mask_prob: probability that such a reference has its mouth masked (the paper: 1).
            An inference portrait is not masked; a recipe that also trains unmasked
            other-emotion references sees that case (the portrait shows another expression
            than the one asked for) in training too.
        mns_neutral_prob: probability that an MNS reference is the person's neutral face,
            where the clip has one among its references (``mns_emotions`` in its metadata);
            otherwise one of its references at random (the paper: any other emotion). An
            animation's portrait is neutral, so a recipe that draws neutral references more
            often trains more of the case it is used in.
        mask_dilation: growth of the mouth polygon, as a fraction of the image side.
        jitter_prob: probability that the emotion condition of a sample is jittered.
        intensity_noise: standard deviation of the intensity noise of a jitter.
        weight_noise: standard deviation of the noise added to the basic-emotion weights.
        modality_dropout: per-channel probability that a jitter drops label, AU or text.
        apex_fraction: draw training windows only where the clip's expression (its per-frame
            AU track) is at least this fraction of its apex: clips ramp up from neutral, and a
            window of the ramp's start would teach the full label on a neutral face. 0: any.
        modalities: the emotion modalities a sample may use (``MODALITIES`` names); the others
            are marked absent. ``None``: all the clip has.
        single_modality_prob: probability that a sample keeps only one of its modalities,
            drawn at random, so that every modality also learns to stand alone (inference
            usually gives one: a label, a text or the speech).
        speech_speed: speed perturbation of the speech-emotion window (training): its audio
            plays at a speed drawn log-uniformly in ``[1 / (1 + s), 1 + s]``
            (:func:`draw_speech_speed`, :func:`speech_window`), so that a speech-emotion
            encoder trained on a few speakers hears tone relative to the voice rather than
            the voices themselves. The lip-sync audio of the window is never perturbed.
    """

    num_frames: int = 16
    image_size: int | None = None
    windows_per_clip: int = 1
    random_window: bool = True
    mns_prob: float = 0.0
    mns_mask_prob: float = 1.0
    mns_neutral_prob: float | None = None
    mask_dilation: float = 0.05
    jitter_prob: float = 0.0
    intensity_noise: float = 0.1
    weight_noise: float = 0.05
    modality_dropout: float = 0.2
    apex_fraction: float = 0.0
    modalities: list[str] | None = None
    single_modality_prob: float = 0.0
    speech_speed: float = 0.0

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.windows_per_clip < 1:
            raise ValueError("num_frames and windows_per_clip must be ≥ 1")
        unknown = set(self.modalities or ()) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown emotion modalities {sorted(unknown)}; valid: "
                             f"{', '.join(MODALITIES)}")
        for name in ("mns_prob", "mns_mask_prob", "mns_neutral_prob", "jitter_prob",
                     "modality_dropout", "apex_fraction", "single_modality_prob"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.speech_speed < 1.0:
            raise ValueError(f"speech_speed must be in [0, 1), got {self.speech_speed}")

    @classmethod
    def evaluation(cls, num_frames: int, image_size: int | None = None) -> SamplingOptions:
        """Deterministic windows, same-clip references, no jitter: for validation and tests."""
        return cls(num_frames=num_frames, image_size=image_size, random_window=False)


def window_audio(audio: np.ndarray, start: int, num_frames: int,
                 context: int = AUDIO_CONTEXT) -> np.ndarray:
    """Audio of frames ``[start - context, start + num_frames + context)``, zeros outside."""
    chunks = audio.reshape(-1, SAMPLES_PER_FRAME)
    return window_frames(chunks, start, num_frames, context).reshape(-1)


def speech_window(audio: np.ndarray, start: int, num_frames: int,
                  speed: float = 1.0) -> np.ndarray:
    """Audio of ``max(SPEECH_FRAMES, num_frames)`` frames around frames ``[start, start +
    num_frames)``: centred on them, shifted to stay inside the audio where it is long enough,
    zero-padded where it is not.

    ``speed`` ≠ 1 plays the audio around the same centre that much faster (speed perturbation,
    Ko et al. 2015: pitch, formants and rate scale together, as another speaker's voice would),
    by linear interpolation; the window keeps its length."""
    chunks = audio.reshape(-1, SAMPLES_PER_FRAME)
    span = max(SPEECH_FRAMES, num_frames)
    first = max(min(start - (span - num_frames) // 2, len(chunks) - span), 0)
    if speed == 1.0:
        return window_frames(chunks, first, span, context=0).reshape(-1)
    offsets = np.arange(span * SAMPLES_PER_FRAME) - (span * SAMPLES_PER_FRAME - 1) / 2
    positions = first * SAMPLES_PER_FRAME + (span * SAMPLES_PER_FRAME - 1) / 2 + offsets * speed
    return np.interp(positions, np.arange(len(audio)), audio, left=0.0,
                     right=0.0).astype(audio.dtype)


def draw_speech_speed(rng: np.random.Generator, perturbation: float) -> float:
    """A speed for :func:`speech_window`, log-uniform in ``[1 / (1 + perturbation), 1 +
    perturbation]`` (1 when ``perturbation`` is 0)."""
    if not perturbation:
        return 1.0
    return float(np.exp(rng.uniform(-1, 1) * np.log1p(perturbation)))


def window_frames(per_frame: np.ndarray, start: int, num_frames: int, context: int) -> np.ndarray:
    """Rows ``[start - context, start + num_frames + context)`` of per-frame data, zero-padded."""
    out = np.zeros((num_frames + 2 * context, *per_frame.shape[1:]), dtype=per_frame.dtype)
    lo, hi = start - context, start + num_frames + context
    src_lo, src_hi = max(lo, 0), min(hi, len(per_frame))
    if src_hi > src_lo:
        out[src_lo - lo : src_hi - lo] = per_frame[src_lo:src_hi]
    return out


def apex_window_starts(aus: np.ndarray, num_frames: int, fraction: float) -> np.ndarray:
    """The starts of the ``num_frames`` windows of a clip with per-frame AUs ``aus`` (T 17)
    that training may draw: all of them, or with ``fraction`` those whose every frame shows at
    least that share of the clip's apex expression (the best window when none does)."""
    starts = np.arange(len(aus) - num_frames + 1)
    if not fraction:
        return starts
    strength = np.linalg.norm(aus[:, _EXPRESSION_AUS].astype(np.float32), axis=1)
    if strength.max() <= 0:  # neutral: every window is at its "apex"
        return starts
    lowest = np.lib.stride_tricks.sliding_window_view(strength, num_frames).min(1)
    eligible = starts[lowest >= fraction * strength.max()]
    return eligible if len(eligible) else starts[[int(lowest.argmax())]]


def frames_audio(audio: np.ndarray, num_frames: int) -> np.ndarray:
    """``audio`` trimmed or zero-padded to exactly ``num_frames × 640`` samples."""
    total = num_frames * SAMPLES_PER_FRAME
    audio = audio[:total]
    return np.pad(audio, (0, total - len(audio))) if len(audio) < total else audio


def clip_audio(clip: Clip) -> np.ndarray:
    """The clip's audio trimmed or zero-padded to exactly ``frames × 640`` samples."""
    return frames_audio(clip.audio, len(clip.frames))


def clip_track(clip: Clip) -> np.ndarray:
    """The clip's audio (:func:`clip_audio`) normalised as one track, as the audio encoder
    hears it (:func:`~moee.data.media.normalize_track`)."""
    return normalize_track(clip_audio(clip))


def to_tensor_images(frames: np.ndarray, size: int | None) -> torch.Tensor:
    """``(..., H, W, 3) uint8`` → ``(..., 3, size, size)`` uint8 (see ``normalize_images``)."""
    if size is not None and frames.shape[-2] != size:
        flat = frames.reshape(-1, *frames.shape[-3:])
        interpolation = cv2.INTER_AREA if frames.shape[-2] > size else cv2.INTER_LINEAR
        flat = np.stack([cv2.resize(f, (size, size), interpolation=interpolation) for f in flat])
        frames = flat.reshape(*frames.shape[:-3], size, size, 3)
    return torch.from_numpy(np.ascontiguousarray(frames)).movedim(-1, -3)


@dataclass
class EmotionSample:
    """The emotion condition of one sample, in all its modalities (before collation)."""

    label: np.ndarray  # (6,) weights × intensity
    au: np.ndarray  # (17,) mean AU intensities over the window
    text: str
    intensity: float
    present: np.ndarray  # (4,) bool, order MODALITIES

    @classmethod
    def from_clip(cls, clip: Clip, aus: np.ndarray) -> EmotionSample:
        """The clip's own condition; ``aus`` are the window's per-frame AU intensities."""
        extra = clip.meta.extra or {}
        weights = np.asarray(clip.meta.weights, dtype=np.float32)
        present = np.array([
            extra.get("label_source") != NO_SOURCE,
            extra.get("au_source") != NO_SOURCE,
            bool(clip.meta.text),
            True,
        ])
        return cls(
            label=weights * np.float32(clip.meta.intensity),
            au=aus.mean(axis=0).astype(np.float32),
            text=clip.meta.text,
            intensity=float(clip.meta.intensity),
            present=present,
        )

    def jittered(self, rng: np.random.Generator, options: SamplingOptions) -> EmotionSample:
        """A noisy copy: intensity and weight noise, then random dropout of label / AU / text."""
        label, intensity = self.label, self.intensity
        total = float(label.sum())
        if total > 0:
            weights = np.clip(label / total + rng.normal(0, options.weight_noise, label.shape), 0,
                              None)
            weights /= max(float(weights.sum()), 1e-6)
            intensity = float(np.clip(intensity + rng.normal(0, options.intensity_noise), 0, 1))
            label = (weights * intensity).astype(np.float32)
        present = self.present.copy()
        drop = rng.random(3) < options.modality_dropout
        present[:3] &= ~drop
        return self._masked(present, label, intensity)

    def _masked(self, present: np.ndarray, label: np.ndarray | None = None,
                intensity: float | None = None) -> EmotionSample:
        """A copy using only the ``present`` modalities (absent channels zeroed)."""
        label = self.label if label is None else label
        return EmotionSample(
            label=label if present[0] else np.zeros_like(label),
            au=self.au if present[1] else np.zeros_like(self.au),
            text=self.text if present[2] else "",
            intensity=self.intensity if intensity is None else intensity,
            present=present,
        )

    def restricted(self, options: SamplingOptions, rng: np.random.Generator) -> EmotionSample:
        """Only the allowed ``options.modalities``, and with ``single_modality_prob`` just one
        of them (at random); absent channels are zeroed as a jitter's dropout does."""
        present = self.present.copy()
        if options.modalities is not None:
            present &= np.isin(MODALITIES, options.modalities)
        if options.single_modality_prob and present.sum() > 1 \
                and rng.random() < options.single_modality_prob:
            keep = rng.choice(np.flatnonzero(present))
            present[:] = False
            present[keep] = True
        return self if (present == self.present).all() else self._masked(present)


class ClipSampler:
    """Cuts training or evaluation samples (dicts of tensors) out of decoded clips.

    Picklable; the random generator is created lazily inside each data-loader worker from
    ``(seed, rank, worker id)``.
    """

    def __init__(self, options: SamplingOptions, seed: int = 0, rank: int = 0):
        self.options = options
        self.seed = seed
        self.rank = rank
        self._rng: np.random.Generator | None = None

    @property
    def rng(self) -> np.random.Generator:
        """This worker's generator."""
        if self._rng is None:
            info = torch.utils.data.get_worker_info()
            worker = info.id if info is not None else 0
            self._rng = np.random.default_rng([self.seed, self.rank, worker])
        return self._rng

    def __call__(self, clip: Clip) -> list[dict[str, Any]]:
        """All samples of one clip (``windows_per_clip`` of them; none if it is too short)."""
        f = self.options.num_frames
        total = len(clip.frames)
        if total < f:
            log.warning("clip %r has %d frames, fewer than a window of %d: skipped",
                        clip.key, total, f)
            return []
        if self.options.random_window:
            rng = self.rng
            starts = rng.choice(self.window_starts(clip), size=self.options.windows_per_clip)
        else:
            rng = np.random.default_rng(zlib.crc32(clip.key.encode()))
            starts = [(total - f) // 2]
        audio = clip_track(clip)
        return [self.sample(clip, int(start), audio, rng) for start in starts]

    def window_starts(self, clip: Clip) -> np.ndarray:
        """The window starts training may draw (:func:`apex_window_starts`)."""
        return apex_window_starts(clip.aus, self.options.num_frames, self.options.apex_fraction)

    def sample(self, clip: Clip, start: int, audio: np.ndarray,
               rng: np.random.Generator) -> dict[str, Any]:
        """The sample of the window starting at frame ``start``."""
        opts = self.options
        f = opts.num_frames
        size = opts.image_size or clip.meta.size
        window = slice(start, start + f)
        motion = [max(start - k, 0) for k in range(MOTION_FRAMES, 0, -1)]
        reference, ref_landmarks, other = self._reference(clip, start, rng)
        masked = other and (opts.mns_mask_prob >= 1 or rng.random() < opts.mns_mask_prob)
        mask = torch.from_numpy(mouth_mask(ref_landmarks, size, opts.mask_dilation))
        reference = to_tensor_images(reference, size)
        motion_frames = to_tensor_images(clip.frames[motion], size)
        if masked:
            reference = reference.clone()  # never write into the clip's own arrays
            reference[:, mask] = MASK_FILL
        if other:
            # The clip's own previous frames would show the target expression that MNS hides:
            # start from the reference instead, as the first clip of an animation does.
            motion_frames = reference[None].expand(MOTION_FRAMES, -1, -1, -1).clone()
        emotion = EmotionSample.from_clip(clip, clip.aus[window])
        if opts.jitter_prob and rng.random() < opts.jitter_prob:
            emotion = emotion.jittered(rng, opts)
        emotion = emotion.restricted(opts, rng)
        name = clip.meta.emotion
        speed = draw_speech_speed(rng, opts.speech_speed if opts.random_window else 0.0)
        sample = {
            "frames": to_tensor_images(clip.frames[window], size),
            "reference": reference,
            "motion_frames": motion_frames,
            "reference_is_masked": masked,
            "audio": torch.from_numpy(window_audio(audio, start, f)),
            "emotion": {
                "label": torch.from_numpy(emotion.label),
                "au": torch.from_numpy(emotion.au),
                "text": emotion.text,
                "speech": torch.from_numpy(speech_window(audio, start, f, speed)),
                "present": torch.from_numpy(emotion.present),
            },
            "emotion_index": BASIC_EMOTIONS.index(name) if name in BASIC_EMOTIONS else -1,
            "emotion_name": name,
            "intensity": emotion.intensity,
            "landmarks": torch.from_numpy(clip.landmarks[window].astype(np.float32)),
            "au_frames": torch.from_numpy(clip.aus[window].astype(np.float32)),
            "mouth_mask": mask[None].float(),
            "identity": clip.meta.identity,
            "key": clip.key,
            "start_frame": start,
        }
        return sample

    def _reference(self, clip: Clip, start: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
        """(frame, its landmarks, whether it is an MNS reference of another clip)."""
        opts = self.options
        refs = clip.extras.get(MNS_REFERENCE)
        if (opts.mns_prob and refs is not None and len(refs)
                and MNS_LANDMARKS in clip.extras and rng.random() < opts.mns_prob):
            index = self._mns_index(clip, len(refs), rng)
            return refs[index], clip.extras[MNS_LANDMARKS][index].astype(np.float32), True
        if opts.random_window:
            index = int(rng.integers(len(clip.frames)))
        else:
            index = start + opts.num_frames // 2
        return clip.frames[index], clip.landmarks[index], False

    def _mns_index(self, clip: Clip, count: int, rng: np.random.Generator) -> int:
        """Which of the clip's ``count`` MNS references to use (``mns_neutral_prob``)."""
        names = clip.meta.extra.get("mns_emotions", [])[:count]
        neutral = [i for i, name in enumerate(names) if name == NEUTRAL]
        chance = self.options.mns_neutral_prob
        if chance is None or not neutral or len(neutral) == count:
            return int(rng.integers(count))
        pool = neutral if rng.random() < chance else [i for i in range(count) if i not in neutral]
        return pool[int(rng.integers(len(pool)))]
