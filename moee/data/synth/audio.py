"""Speech-like audio for SynthEmo, and the viseme track of the same syllable timeline.

A clip's speech is a sequence of syllables (optional consonant, then a vowel) with random
timing. Vowels are a glottal pulse train shaped by three formant resonators; consonants are
filtered noise bursts or nasal murmurs. Pitch, its range, loudness, rate, tremor, breathiness
and brightness follow the emotion (:func:`prosody`). The mouth of the face follows the very
same vowel envelopes (:attr:`Speech.visemes`), so audio energy and jaw opening line up at lag 0.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import butter, lfilter

from moee.data.media import AUDIO_RATE, SAMPLES_PER_FRAME, read_audio
from moee.emotions import NEUTRAL, EmotionCondition, parse_emotion

VOWELS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "a": ((730, 1090, 2440), (0.95, 0.1, 0.3)),
    "e": ((530, 1840, 2480), (0.55, 0.0, 0.6)),
    "i": ((270, 2290, 3010), (0.25, 0.0, 1.0)),
    "o": ((570, 840, 2410), (0.6, 0.85, 0.0)),
    "u": ((300, 870, 2240), (0.3, 1.0, 0.0)),
    "@": ((500, 1500, 2500), (0.45, 0.1, 0.2)),
}
"""Vowel -> (formants F1, F2, F3 in Hz; viseme jaw, round, spread)."""
CONSONANTS = ("none", "plosive", "fricative", "hush", "nasal")
_BANDWIDTHS = (80.0, 100.0, 150.0)
_NOISE_BANDS = {"plosive": (500, 6000), "fricative": (3500, 7500), "hush": (1800, 4500)}


@dataclass(frozen=True)
class Prosody:
    """How an emotion sounds: multipliers and amounts relative to the speaker's neutral voice."""

    pitch: float = 1.0
    pitch_range: float = 0.15
    energy: float = 0.6
    rate: float = 1.0
    tremor: float = 0.0
    breath: float = 0.03
    brightness: float = 0.5
    rise: float = 0.0


EMOTION_PROSODY: dict[str, Prosody] = {
    NEUTRAL: Prosody(),
    "angry": Prosody(pitch=1.12, pitch_range=0.25, energy=1.0, rate=1.1, brightness=0.9),
    "disgusted": Prosody(pitch=0.9, pitch_range=0.12, energy=0.55, rate=0.85, breath=0.08),
    "fear": Prosody(pitch=1.25, pitch_range=0.18, energy=0.5, rate=1.2, tremor=0.06, breath=0.1),
    "happy": Prosody(pitch=1.18, pitch_range=0.4, energy=0.8, rate=1.1, brightness=0.7),
    "sad": Prosody(pitch=0.8, pitch_range=0.04, energy=0.35, rate=0.75, breath=0.15,
                   brightness=0.25),
    "surprised": Prosody(pitch=1.4, pitch_range=0.35, energy=0.8, rise=0.25, brightness=0.7),
}
"""Prosody of neutral and each basic emotion; mixes interpolate these (see :func:`prosody`)."""


def prosody(emotion: str | EmotionCondition) -> Prosody:
    """Prosody of any condition: neutral moved towards each basic emotion by weight × intensity."""
    cond = parse_emotion(emotion)
    base = EMOTION_PROSODY[NEUTRAL]
    values = dict(vars(base))
    for name, weight in cond.components.items():
        share = weight * cond.intensity
        for key, value in vars(EMOTION_PROSODY[name]).items():
            values[key] += share * (value - getattr(base, key))
    return Prosody(**values)


@dataclass
class Speech:
    """Synthetic speech for ``T`` video frames.

    ``audio`` (T*640,) float32 in [-1, 1]; ``visemes`` (T, 3) jaw/round/spread in [0, 1];
    ``f0`` (T,) mean pitch in Hz of each frame's voiced samples (0 when unvoiced);
    ``syllables`` (start s, vowel start s, end s, vowel, consonant) of each syllable.
    """

    audio: np.ndarray
    visemes: np.ndarray
    f0: np.ndarray
    syllables: list[tuple[float, float, float, str, str]]


def _timeline(duration: float, rate: float, rng: np.random.Generator):
    """Random syllables: (start, vowel start, end, vowel, consonant) in seconds."""
    syllables, t = [], rng.uniform(0.05, 0.3)
    vowels = list(VOWELS)
    while t < duration - 0.15:
        for _ in range(int(rng.integers(1, 4))):
            consonant = str(rng.choice(CONSONANTS, p=[0.25, 0.25, 0.2, 0.1, 0.2]))
            onset = 0.0 if consonant == "none" else rng.uniform(0.035, 0.08) / rate
            length = rng.uniform(0.09, 0.22) / rate
            end = min(t + onset + length, duration - 0.02)
            if end - t - onset < 0.05:
                break
            syllables.append((t, t + onset, end, str(rng.choice(vowels)), consonant))
            t = end + rng.uniform(0.0, 0.03)
        t += rng.uniform(0.05, 0.3) / rate
    return syllables


def _envelope(n: int, attack: float) -> np.ndarray:
    """A raised-cosine attack and decay over ``n`` samples (attack as a fraction of ``n``)."""
    env = np.ones(n, np.float32)
    edge = max(1, int(n * attack))
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, edge))
    env[:edge], env[-edge:] = ramp, ramp[::-1]
    return env


def _resonate(signal: np.ndarray, formants, sample_rate: int) -> np.ndarray:
    out = np.zeros_like(signal)
    for freq, bw, gain in zip(formants, _BANDWIDTHS, (1.0, 0.6, 0.3)):
        r = np.exp(-np.pi * bw / sample_rate)
        theta = 2 * np.pi * freq / sample_rate
        out += gain * lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], signal)
    return out


def synthesize_speech(num_frames: int, emotion: str | EmotionCondition = NEUTRAL,
                      rng: np.random.Generator | None = None, pitch_hz: float = 120.0,
                      formant_scale: float = 1.0) -> Speech:
    """Synthesize ``num_frames`` video frames' worth of speech with its viseme track.

    Args:
        num_frames: length in video frames (25 fps; 640 samples each at 16 kHz).
        emotion: any emotion condition (:func:`moee.emotions.parse_emotion`).
        rng: the random source (timing, vowels, noise); a fresh default one if ``None``.
        pitch_hz: the speaker's neutral mean pitch.
        formant_scale: vocal-tract scale (about 1.15 for higher voices).
    """
    rng = rng or np.random.default_rng()
    style = prosody(emotion)
    sr, n = AUDIO_RATE, num_frames * SAMPLES_PER_FRAME
    duration = n / sr
    syllables = _timeline(duration, style.rate, rng)
    time = np.arange(n, dtype=np.float32) / sr
    # pitch: accents per syllable, declination, rise, tremor, jitter
    accents = np.zeros(n, np.float32)
    for start, _, end, _, _ in syllables:
        accents[int(start * sr):int(end * sr)] = rng.uniform(-1, 1)
    kernel = np.hanning(int(0.08 * sr))
    accents = np.convolve(accents, kernel / kernel.sum(), mode="same")
    f0 = pitch_hz * style.pitch * (1 + style.pitch_range * accents - 0.08 * time / duration
                                   + style.rise * (time / duration) ** 2
                                   + style.tremor * np.sin(2 * np.pi * 6.0 * time)
                                   + rng.normal(0, 0.004, n))
    phase = np.cumsum(f0 / sr)
    pulses = np.diff(np.floor(phase), prepend=0.0).astype(np.float32)
    tilt = 0.97 - 0.07 * style.brightness
    source = lfilter([1.0], [1.0, -tilt], pulses).astype(np.float32)
    source -= lfilter([1.0], [1.0, -0.995], source) * 0.02
    source += style.breath * rng.normal(0, 1, n).astype(np.float32)
    audio = np.zeros(n, np.float32)
    mouth = np.zeros((n, 3), np.float32)
    voiced = np.zeros(n, bool)
    for start, vowel_start, end, vowel, consonant in syllables:
        a, b, c = int(start * sr), int(vowel_start * sr), int(end * sr)
        formants, shape = VOWELS[vowel]
        env = _envelope(c - b, 0.25) * rng.uniform(0.7, 1.0)
        sound = _resonate(source[b:c], np.array(formants) * formant_scale, sr)
        sound /= np.sqrt(np.mean(sound**2)) + 1e-8
        audio[b:c] += sound * env * (0.3 + 0.7 * shape[0])  # open vowels are louder
        mouth[b:c] += env[:, None] * np.array(shape, np.float32)
        voiced[b:c] = True
        if consonant in _NOISE_BANDS and b > a:
            low, high = _NOISE_BANDS[consonant]
            bb, ab = butter(2, [low / (sr / 2), high / (sr / 2)], btype="band")
            burst = lfilter(bb, ab, rng.normal(0, 1, b - a)).astype(np.float32)
            burst /= np.sqrt(np.mean(burst**2)) + 1e-8
            audio[a:b] += 0.15 * burst * _envelope(b - a, 0.3 if consonant != "plosive" else 0.1)
        elif consonant == "nasal" and b > a:
            murmur = _resonate(source[a:b], (250, 1000, 2200), sr)
            murmur /= np.sqrt(np.mean(murmur**2)) + 1e-8
            audio[a:b] += 0.1 * murmur * _envelope(b - a, 0.3)
    peak = np.abs(audio).max()
    if peak > 0:
        audio *= 0.9 * style.energy / peak
    frames = mouth.reshape(num_frames, SAMPLES_PER_FRAME, 3).mean(1)
    voiced_f0 = np.where(voiced, f0, 0).reshape(num_frames, -1)
    counts = voiced.reshape(num_frames, -1).sum(1)
    frame_f0 = np.where(counts > 0, voiced_f0.sum(1) / np.maximum(counts, 1), 0.0)
    return Speech(np.clip(audio, -1, 1).astype(np.float32), np.clip(frames, 0, 1),
                  frame_f0.astype(np.float32), syllables)


def visemes_from_envelope(audio: np.ndarray, num_frames: int) -> np.ndarray:
    """(T, 3) visemes from a waveform's per-frame RMS alone: jaw follows energy."""
    blocks = np.resize(audio, num_frames * SAMPLES_PER_FRAME).reshape(num_frames, -1)
    rms = np.sqrt(np.mean(blocks.astype(np.float64) ** 2, axis=1))
    jaw = np.clip(rms / max(np.percentile(rms, 95), 1e-6), 0, 1) * 0.8
    return np.stack([jaw, 0.2 * jaw, 0.2 * jaw], 1).astype(np.float32)


def espeak_speech(text: str, num_frames: int, voice: str = "en", pitch: int = 50,
                  speed: int = 160) -> Speech:
    """Speak ``text`` with espeak-ng (when installed), fitted to ``num_frames`` frames.

    Visemes come from the energy envelope (:func:`visemes_from_envelope`).
    Raises RuntimeError when ``espeak-ng`` is not on the PATH.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install -y espeak-ng)")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path),
                        text], check=True, capture_output=True)
        audio = read_audio(path)
    n = num_frames * SAMPLES_PER_FRAME
    audio = np.pad(audio[:n], (0, max(0, n - len(audio)))).astype(np.float32)
    return Speech(audio, visemes_from_envelope(audio, num_frames),
                  np.zeros(num_frames, np.float32), [])
