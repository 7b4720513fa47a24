"""Identities of SynthEmo: every parameter that makes one synthetic person look like themself.

An :class:`Identity` is drawn from a seed and an index alone (:func:`sample_identity`), so the
same person comes back in every process, split and run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HAIR_STYLES: tuple[str, ...] = ("buzz", "short", "bob", "long", "curly", "bald", "bun")
"""Hair styles the renderer draws (``bald`` draws none)."""
BACKGROUNDS: tuple[str, ...] = ("solid", "gradient", "stripes", "noise", "dots")
"""Background textures."""

_SKIN_LIGHT = np.array([246, 216, 192], np.float32)
_SKIN_DARK = np.array([92, 60, 44], np.float32)
_HAIR_COLOURS = np.array(
    [[25, 20, 18], [60, 40, 28], [105, 70, 40], [150, 75, 35], [215, 180, 110], [170, 165, 160],
     [190, 90, 40], [40, 60, 140], [200, 80, 140]], np.float32
)
_HAIR_WEIGHTS = np.array([0.25, 0.2, 0.15, 0.08, 0.12, 0.08, 0.06, 0.03, 0.03])
_EYE_COLOURS = np.array(
    [[70, 45, 25], [40, 28, 20], [60, 110, 170], [70, 130, 80], [120, 95, 50], [110, 120, 130]],
    np.float32,
)


def _rgb(colour) -> tuple[float, ...]:
    """A colour as a tuple of plain floats clipped to 0..255 (what OpenCV accepts)."""
    return tuple(float(v) for v in np.clip(colour, 0, 255))


def _hsv_colour(rng: np.random.Generator, saturation: tuple[float, float],
                value: tuple[float, float]) -> np.ndarray:
    """A random RGB colour (0..255 floats) with saturation and value in the given ranges."""
    h, s, v = rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    rgb = v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)
    return (rgb * 255).astype(np.float32)


@dataclass(frozen=True)
class Identity:
    """Shape, colour and accessory parameters of one synthetic person.

    Lengths are in face units (half the face width is about 1); colours are RGB 0..255.
    """

    name: str
    scale: float
    center: tuple[float, float]
    face_width: float
    chin: float
    jaw_squareness: float
    forehead: float
    skin: tuple[float, ...]
    lips: tuple[float, ...]
    blush: float
    hair_style: str
    hair_colour: tuple[float, ...]
    hair_volume: float
    hairline: float
    hair_part: float
    eye_colour: tuple[float, ...]
    eye_spacing: float
    eye_width: float
    eye_upper: float
    eye_lower: float
    eye_tilt: float
    brow_height: float
    brow_thickness: float
    brow_arch: float
    brow_colour: tuple[float, ...]
    nose_width: float
    nose_length: float
    mouth_y: float
    mouth_width: float
    upper_lip: float
    lower_lip: float
    ear_size: float
    background: str
    background_colours: tuple[tuple[float, ...], tuple[float, ...]]
    texture_seed: int
    shirt: tuple[float, ...]
    glasses: tuple[float, ...] | None
    beard: bool
    pronoun: str
    pitch_hz: float

    @property
    def possessive(self) -> str:
        """``her``, ``his`` or ``their``, for the text descriptions."""
        return {"she": "her", "he": "his"}.get(self.pronoun, "their")


def identity_name(index: int) -> str:
    """The identity label stored in shards: ``synth00042``."""
    return f"synth{index:05d}"


def sample_identity(seed: int, index: int) -> Identity:
    """Draw identity ``index`` of the SynthEmo population of ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, index, 7919])
    u = rng.uniform
    tone = u(0, 1) ** 1.2
    skin = _SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone + rng.normal(0, 6, 3)
    lips = skin * np.array([0.82, 0.55, 0.55]) + np.array([30, 5, 10])
    if u() < 0.15:  # lipstick
        lips = np.array([170, 30, 50]) * u(0.7, 1.1) + rng.normal(0, 10, 3)
    hair = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=_HAIR_WEIGHTS)] * u(0.8, 1.15)
    pronoun = str(rng.choice(["she", "he", "they"], p=[0.46, 0.46, 0.08]))
    beard = pronoun == "he" and u() < 0.35
    styles = ("bob", "long", "bun", "curly", "short") if pronoun == "she" else HAIR_STYLES
    background = str(rng.choice(BACKGROUNDS))
    colours = (_hsv_colour(rng, (0.1, 0.6), (0.35, 0.95)), _hsv_colour(rng, (0.1, 0.7), (0.3, 0.9)))
    glasses = _rgb(_hsv_colour(rng, (0.0, 0.6), (0.05, 0.5))) if u() < 0.2 else None
    return Identity(
        name=identity_name(index),
        scale=u(0.36, 0.4),
        center=(u(-0.02, 0.02), u(-0.015, 0.025)),
        face_width=u(0.86, 1.04),
        chin=u(0.98, 1.16),
        jaw_squareness=u(1.9, 3.2),
        forehead=u(0.95, 1.1),
        skin=_rgb(skin),
        lips=_rgb(lips),
        blush=u(0.0, 0.25),
        hair_style=str(rng.choice(styles)),
        hair_colour=_rgb(hair),
        hair_volume=u(0.06, 0.2),
        hairline=u(-0.8, -0.64),
        hair_part=u(-0.12, 0.12),
        eye_colour=_rgb(_EYE_COLOURS[rng.integers(len(_EYE_COLOURS))] * u(0.85, 1.15)),
        eye_spacing=u(0.38, 0.44),
        eye_width=u(0.17, 0.2),
        eye_upper=u(0.085, 0.105),
        eye_lower=u(0.05, 0.065),
        eye_tilt=u(-0.015, 0.03),
        brow_height=u(-0.4, -0.36),
        brow_thickness=u(0.065, 0.1),
        brow_arch=u(0.015, 0.06),
        brow_colour=_rgb(np.minimum(hair * u(0.35, 0.6), skin * 0.45)),
        nose_width=u(0.11, 0.17),
        nose_length=u(0.27, 0.34),
        mouth_y=u(0.6, 0.66),
        mouth_width=u(0.25, 0.32),
        upper_lip=u(0.045, 0.07),
        lower_lip=u(0.06, 0.09),
        ear_size=u(0.85, 1.15),
        background=background,
        background_colours=(_rgb(colours[0]), _rgb(colours[1])),
        texture_seed=int(rng.integers(2**31)),
        shirt=_rgb(_hsv_colour(rng, (0.2, 0.8), (0.2, 0.85))),
        glasses=glasses,
        beard=beard,
        pronoun=pronoun,
        pitch_hz={"she": u(180, 240), "he": u(95, 140)}.get(pronoun, u(130, 190)),
    )
