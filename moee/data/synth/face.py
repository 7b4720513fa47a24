"""The parametric SynthEmo face: FACS action units, visemes and head pose in, pixels and the 68
iBUG landmarks of what was drawn out.

Geometry lives in *face units* (x right, y down, half the face width about 1). Every drawn
point is an affine function of a small set of muscle *controls* (brow raise, lid opening, lip
corner pull, jaw drop, ...): :class:`FaceRenderer` evaluates the geometry once per identity
with each control switched on in turn, so a frame costs one small matrix product, a few clamps
(lids never cross, lips never overlap, the iris stays inside the lids), a head rotation and
about thirty anti-aliased OpenCV fills at sub-pixel precision. The 68 landmarks are a fixed
subset of the same drawn points.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from moee.data.synth.identity import Identity
from moee.emotions import ACTION_UNITS

CONTROLS: tuple[str, ...] = (
    "brow_inner_up", "brow_outer_up", "brow_down", "upper_lid", "lower_lid", "cheek_up",
    "nose_up", "upper_lip_up", "corner_up", "corner_down", "lower_lip_down", "chin_up",
    "corner_out", "lip_thin", "lips_part", "jaw", "round", "gaze_x", "gaze_y",
)
"""Muscle controls the geometry is affine in (derived from AUs, visemes and gaze per frame)."""
SPEECH_JAW = 0.6
"""AU26 intensity of the widest speech jaw opening (viseme jaw = 1)."""
MIN_SIZE, MAX_SIZE = 32, 512
_AU = {name: i for i, name in enumerate(ACTION_UNITS)}
_C = {name: i for i, name in enumerate(CONTROLS)}
_SHIFT = 4
_ONE = 1 << _SHIFT
_EYE_POINTS = 10
_TEETH_HEIGHT = 0.06
_SCLERA = (236, 233, 228)
_MOUTH = (70, 22, 28)
_TEETH = (242, 240, 230)


def combine_speech(aus: np.ndarray, viseme: np.ndarray) -> np.ndarray:
    """The AU intensities a frame shows once speech moves the mouth (AU25, AU26 raised).

    Speech opens the jaw up to :data:`SPEECH_JAW` (combined with AU26 as a probabilistic OR;
    a surprised jaw drop opens wider than talking does) and parts the lips (AU25 at least three
    times the viseme jaw), so the stored labels describe the pixels.
    ``aus`` (..., 17) and ``viseme`` (..., 3) broadcast.
    """
    out = np.array(aus, dtype=np.float32, copy=True)
    jaw = np.asarray(viseme, dtype=np.float32)[..., 0]
    out[..., _AU["AU26"]] = 1 - (1 - out[..., _AU["AU26"]]) * (1 - SPEECH_JAW * jaw)
    out[..., _AU["AU25"]] = np.maximum(out[..., _AU["AU25"]], np.minimum(1, 3 * jaw))
    return out


def mouth_opening_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap over inner mouth width, from (..., 68, 2) landmarks: the Sync target."""
    lmk = np.asarray(landmarks, dtype=np.float32)
    gap = (lmk[..., [67, 66, 65], 1] - lmk[..., [61, 62, 63], 1]).mean(-1)
    width = np.linalg.norm(lmk[..., 64, :] - lmk[..., 60, :], axis=-1)
    return gap / np.maximum(width, 1e-6)


def _controls(aus: np.ndarray, viseme: np.ndarray, gaze: tuple[float, float],
              lid_ratio: float) -> np.ndarray:
    """Map 17 AU intensities (speech already combined) and 3 visemes to the control vector."""
    a = {name: float(aus[i]) for name, i in _AU.items()}
    _, rounding, spread = (float(v) for v in viseme)
    c = np.zeros(len(CONTROLS), np.float32)
    c[_C["brow_inner_up"]] = a["AU1"]
    c[_C["brow_outer_up"]] = a["AU2"]
    c[_C["brow_down"]] = a["AU4"] + 0.35 * a["AU9"]
    lower = -0.5 * a["AU6"] - 0.45 * a["AU7"] - 0.25 * a["AU9"]
    upper = 0.6 * a["AU5"] - 0.3 * a["AU7"] - 0.2 * a["AU4"] - 0.1 * a["AU6"] - 0.15 * a["AU9"]
    closed = -1 - lid_ratio * (1 + lower)  # upper-lid setting that meets the lower lid
    blink = a["AU45"]
    c[_C["upper_lid"]] = (1 - blink) * upper + blink * closed
    c[_C["lower_lid"]] = lower
    c[_C["cheek_up"]] = a["AU6"]
    c[_C["nose_up"]] = a["AU9"]
    c[_C["upper_lip_up"]] = a["AU10"] + 0.3 * a["AU9"]
    c[_C["corner_up"]] = a["AU12"]
    c[_C["corner_down"]] = a["AU15"]
    c[_C["lower_lip_down"]] = a["AU16"]
    c[_C["chin_up"]] = a["AU17"]
    c[_C["corner_out"]] = a["AU20"] + 0.5 * spread
    c[_C["lip_thin"]] = a["AU23"]
    c[_C["lips_part"]] = a["AU25"]
    c[_C["jaw"]] = a["AU26"]
    c[_C["round"]] = rounding
    c[_C["gaze_x"]], c[_C["gaze_y"]] = gaze
    return c


class _Shape:
    """Named groups of 2D points built in drawing order; ``groups[name]`` is their slice."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.groups: dict[str, slice] = {}
        self.count = 0

    def add(self, name: str, x, y) -> None:
        pts = np.stack(np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float)), -1)
        pts = pts.reshape(-1, 2)
        self.groups[name] = slice(self.count, self.count + len(pts))
        self.parts.append(pts)
        self.count += len(pts)

    def array(self) -> np.ndarray:
        return np.concatenate(self.parts).astype(np.float32)


def _ellipse(cx, cy, rx, ry, n: int, wobble: float = 0.0, lobes: int = 0):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 1 + wobble * np.sin(lobes * t)
    return cx + rx * r * np.cos(t), cy + ry * r * np.sin(t)


def _geometry(ident: Identity, c: np.ndarray) -> _Shape:
    """Every drawn point for control vector ``c``; affine in ``c`` by construction."""
    k = {name: float(c[i]) for name, i in _C.items()}
    shape = _Shape()
    fw, y0, fh = ident.face_width, -0.1, ident.forehead
    # jaw contour, landmarks 0..16, image-left ear to chin to image-right ear
    t = np.linspace(0, 1, 17)
    cos, sin = -np.cos(np.pi * t), np.sin(np.pi * t)
    e = 2 / ident.jaw_squareness
    jx = fw * np.sign(cos) * np.abs(cos) ** e
    jy = y0 + (ident.chin - y0) * sin ** e
    jy = jy + 0.3 * k["jaw"] * sin ** 2 - 0.04 * k["chin_up"] * sin ** 8
    shape.add("jaw", jx, jy)
    alpha = np.linspace(0, np.pi, 11)[1:-1]
    shape.add("forehead", fw * np.cos(alpha), y0 - fh * np.sin(alpha))
    # brows (17..21 outer->inner on the image left; 22..26 inner->outer, mirrored)
    s = np.linspace(0, 1, 5)  # 0 outer, 1 inner
    bx = -(0.7 - 0.58 * s) + 0.06 * k["brow_down"] * s
    by = (ident.brow_height - ident.brow_arch * np.sin(np.pi * (0.15 + 0.75 * s))
          - 0.15 * k["brow_inner_up"] * s ** 1.5 - 0.02 * k["brow_inner_up"]
          - 0.14 * k["brow_outer_up"] * (1 - s) ** 1.2 - 0.02 * k["brow_outer_up"]
          + 0.07 * k["brow_down"] + 0.05 * k["brow_down"] * s ** 2)
    shape.add("brow_l", bx, by)
    shape.add("brow_r", -bx[::-1], by[::-1])
    # nose (27..30 bridge, 31..35 base) and its drawing helpers
    tip = 0.03 + ident.nose_length - 0.03 * k["nose_up"]
    base = tip + 0.05 - 0.045 * k["nose_up"] - 0.012 * k["upper_lip_up"]
    nw = ident.nose_width + 0.015 * k["nose_up"]
    shape.add("bridge", 0.0, np.linspace(y0, tip, 4) - np.array([0, 0, 0.01, 0]) * k["nose_up"])
    shape.add("nostril_base", nw * np.array([-1, -0.5, 0, 0.5, 1]),
              base + np.array([-0.025, 0.004, 0.012, 0.004, -0.025]))
    side = np.array([0.045, 0.07, 1.1 * nw]), np.array([y0 + 0.03, tip - 0.12, base - 0.05])
    shape.add("nose_side_l", -side[0], side[1])
    shape.add("nose_side_r", side[0][::-1], side[1][::-1])
    for name, sign in (("nostril_l", -1), ("nostril_r", 1)):
        shape.add(name, *_ellipse(sign * 0.55 * nw, base - 0.012, 0.034, 0.016, 6))
    # eyes: upper and lower lid curves, image left to right, sharing their corners
    te = np.linspace(0, 1, _EYE_POINTS)
    bump = np.sin(np.pi * te) ** 0.9
    for side_name, sign in (("l", -1), ("r", 1)):
        cx, cy = sign * ident.eye_spacing, y0
        ex = cx + ident.eye_width * (2 * te - 1)
        outer = 1 - te if sign < 0 else te
        corner = cy - ident.eye_tilt * outer
        upper = corner - ident.eye_upper * bump * (1 + k["upper_lid"])
        lower = corner + ident.eye_lower * bump * (1 + k["lower_lid"])
        shape.add(f"upper_{side_name}", ex, upper)
        shape.add(f"lower_{side_name}", ex, lower)
        crease = corner - (ident.eye_upper + 0.045) * bump * (1 + 0.3 * k["upper_lid"])
        shape.add(f"crease_{side_name}", ex[1:-1], crease[1:-1])
        gx = cx + 0.35 * ident.eye_width * k["gaze_x"]
        gy = cy - 0.005 + 0.025 * k["gaze_y"]
        radius = 0.88 * ident.eye_upper
        shape.add(f"iris_{side_name}", *_ellipse(gx, gy, radius, radius, 16))
        shape.add(f"pupil_{side_name}", *_ellipse(gx, gy, 0.42 * radius, 0.42 * radius, 8))
        shape.add(f"cheek_{side_name}", *_ellipse(
            sign * 0.48, 0.22 - 0.06 * k["cheek_up"] - 0.03 * k["corner_up"], 0.15, 0.09, 10))
        rim = ident.eye_width + 0.07
        shape.add(f"glasses_{side_name}", *_ellipse(cx, cy + 0.01, rim, 0.13, 14, 0.04, 4))
        ox = cx + sign * (ident.eye_width + 0.025)
        shape.add(f"crows_{side_name}", ox + sign * np.array([0, 0.08, 0, 0.075]),
                  cy + np.array([-0.005, -0.045, 0.01, 0.05]))
        shape.add(f"ear_{side_name}", *_ellipse(
            sign * 0.97 * fw, y0 + 0.1, 0.09 * ident.ear_size, 0.17 * ident.ear_size, 8))
    # mouth: outer lip 48..59, inner lip 60..67
    mw, ut, lt, my = ident.mouth_width, ident.upper_lip, ident.lower_lip, ident.mouth_y
    ox = mw * np.array([-1, -0.62, -0.25, 0, 0.25, 0.62, 1, 0.6, 0.28, 0, -0.28, -0.6])
    oy = my + np.array([0, -0.8 * ut, -ut, -0.82 * ut, -ut, -0.8 * ut,
                        0, 0.75 * lt, 0.97 * lt, lt, 0.97 * lt, 0.75 * lt])
    ix = mw * np.array([-0.82, -0.4, 0, 0.4, 0.82, 0.4, 0, -0.4])
    iy = np.full(8, my)
    x, y = np.concatenate([ox, ix]), np.concatenate([oy, iy])
    h = np.abs(x) / mw
    sgn = np.sign(x)
    is_upper = np.zeros(20, bool)
    is_upper[[1, 2, 3, 4, 5, 13, 14, 15]] = True
    is_lower = np.zeros(20, bool)
    is_lower[[7, 8, 9, 10, 11, 17, 18, 19]] = True
    is_outer = np.arange(20) < 12
    corner = np.isin(np.arange(20), [0, 6, 12, 16])
    x = x + sgn * h * (0.07 * k["corner_up"] ** 1 * h + 0.12 * k["corner_out"]
                       - 0.1 * k["round"] - 0.03 * k["jaw"] - 0.03 * k["lip_thin"])
    x = x - sgn * 0.04 * k["round"] * (~is_outer & ~corner)
    y = y - 0.11 * k["corner_up"] * h ** 2 - 0.01 * k["corner_up"]
    y = y + 0.09 * k["corner_down"] * h ** 2 + 0.03 * k["corner_out"] * h ** 2
    y = y + 0.08 * k["jaw"] * corner
    flat = 1 - h ** 2
    y = y + is_upper * (-0.07 * k["upper_lip_up"] * (1 - h ** 3) - 0.005 * k["jaw"]
                        - 0.012 * k["lips_part"] * flat)
    y = y + is_upper * ~corner * (-0.01 * k["upper_lip_up"] * ~is_outer)
    y = y + is_lower * ((0.07 * k["lower_lip_down"] * (1 - h ** 3))
                        + 0.3 * k["jaw"] * (1 - 0.5 * h ** 2) - 0.035 * k["chin_up"] * flat
                        + 0.028 * k["lips_part"] * flat)
    y = y + (is_upper & is_outer) * flat * (0.55 * ut * k["lip_thin"] + 0.2 * ut * k["corner_out"]
                                           - 0.015 * k["round"])
    y = y + (is_lower & is_outer) * flat * (-0.55 * lt * k["lip_thin"] - 0.2 * lt * k["corner_out"]
                                           + 0.015 * k["round"])
    shape.add("lip_outer", x[:12], y[:12])
    shape.add("lip_inner", x[12:], y[12:])
    # wrinkles and folds, drawn with AU-dependent strength
    bh = ident.brow_height
    fy = np.array([bh - 0.02, bh + 0.09]) + 0.05 * k["brow_down"]
    shape.add("furrow", np.array([-0.06, -0.045, 0.06, 0.045]) * (1 - 0.3 * k["brow_down"]),
              np.concatenate([fy, fy]))
    wx = np.array([-0.05, 0.0, 0.05])
    shape.add("nose_wrinkle", np.tile(wx, 3),
              np.repeat([-0.05, 0.0, 0.05], 3) + np.tile([0.01, -0.005, 0.01], 3)
              - 0.02 * k["nose_up"])
    for side_name, sign in (("l", -1), ("r", 1)):
        shape.add(f"fold_{side_name}",
                  sign * (np.array([nw + 0.04, mw + 0.05, mw + 0.07])
                          + np.array([0, 0.05, 0.06]) * k["corner_up"]),
                  np.array([base - 0.06, my - 0.1, my + 0.07])
                  - np.array([0.0, 0.05, 0.05]) * k["corner_up"]
                  - 0.02 * k["upper_lip_up"] + np.array([0, 0.04, 0.12]) * k["jaw"])
    line_y = np.array([-0.54, -0.6]) - 0.05 * (k["brow_inner_up"] + k["brow_outer_up"])
    arc = np.linspace(-0.34, 0.34, 5)
    shape.add("forehead_lines", np.tile(arc, 2),
              np.repeat(line_y, 5) - 0.02 * np.tile(np.cos(arc * 4.5), 2))
    chin_y = my + lt + 0.08 + 0.3 * k["jaw"] - 0.03 * k["chin_up"]
    shape.add("chin_line", np.array([-0.09, 0.0, 0.09]), chin_y + np.array([0.0, 0.015, 0.0]))
    _hair_and_extras(ident, shape, fw, y0, fh, mw, my, base)
    return shape


def _hair_and_extras(ident: Identity, shape: _Shape, fw: float, y0: float, fh: float,
                     mw: float, my: float, base: float) -> None:
    """Hair back and front, beard outline, glasses bridge (none depend on the controls)."""
    vol, style = ident.hair_volume, ident.hair_style
    arc = np.linspace(0, np.pi, 13)
    back = np.zeros((0, 2))
    if style in ("bob", "long"):
        bottom = 0.75 if style == "bob" else 1.8
        widen = 0.06 if style == "bob" else 0.2
        rx, ry = fw + vol + 0.08, fh + vol
        bx = np.concatenate([rx * np.cos(arc), [-(rx + widen), rx + widen]])
        by = np.concatenate([y0 - ry * np.sin(arc), [bottom, bottom]])
        back = np.stack([bx, by], -1)
    elif style == "curly":
        back = np.stack(_ellipse(0, y0 - 0.1, fw + 0.4 + vol, fh + 0.35 + vol, 28, 0.04, 9), -1)
    elif style == "bun":
        back = np.stack(_ellipse(0, y0 - fh - 0.12, 0.3, 0.26, 12), -1)
    shape.add("hair_back", back[:, 0], back[:, 1])
    front = np.zeros((0, 2))
    if style != "bald":
        lift = vol * (0.3 if style == "buzz" else 0.8)
        hairline = ident.hairline - (0.08 if style == "buzz" else 0.0)
        outer = np.linspace(-0.12, np.pi + 0.12, 15)
        ox, oy = (fw + 0.04 + lift * 0.5) * np.cos(outer), y0 + 0.1 - (fh + 0.1 + lift) * np.sin(
            outer)
        inner = np.linspace(np.pi + 0.05, -0.05, 15)
        ix = 0.97 * fw * np.cos(inner)
        iy = y0 + 0.05 - (y0 + 0.05 - hairline) * np.abs(np.sin(inner)) ** 0.55
        iy = iy + ident.hair_part * np.cos(inner) * np.sin(inner)
        if style == "bob":
            iy = iy + 0.04 + 0.025 * np.sin(9 * inner)
        front = np.stack([np.concatenate([ox, ix]), np.concatenate([oy, iy])], -1)
    shape.add("hair_front", front[:, 0], front[:, 1])
    shape.add("beard_top", np.array([mw + 0.13, 0.5 * mw, 0.0, -0.5 * mw, -(mw + 0.13)]),
              np.array([my - 0.07, base + 0.045, base + 0.05, base + 0.045, my - 0.07]))
    shape.add("glasses_bridge", np.array([-0.16, 0.0, 0.16]), np.array([y0 - 0.01, y0 - 0.04,
                                                                       y0 - 0.01]))


def _landmark_index(groups: dict[str, slice]) -> np.ndarray:
    """Indices of the 68 iBUG landmarks among the drawn points."""
    def at(name: str, *offsets: int) -> list[int]:
        return [groups[name].start + o for o in offsets]

    eye = (0, 3, 6, 9)
    index = at("jaw", *range(17)) + at("brow_l", *range(5)) + at("brow_r", *range(5))
    index += at("bridge", *range(4)) + at("nostril_base", *range(5))
    for side in ("l", "r"):
        index += at(f"upper_{side}", *eye) + at(f"lower_{side}", 6, 3)
    index += at("lip_outer", *range(12)) + at("lip_inner", *range(8))
    return np.array(index)


def _depth(points: np.ndarray, groups: dict[str, slice]) -> np.ndarray:
    """Depth of each point towards the camera (face units), for the head rotation."""
    x, y = points[:, 0], points[:, 1]
    z = 0.55 * np.sqrt(np.maximum(0.05, 1 - (x / 1.05) ** 2 - ((y - 0.05) / 1.5) ** 2))
    offsets = {
        "bridge": np.array([0.05, 0.14, 0.24, 0.34]), "nostril_base": 0.2, "nose_side_l": 0.1,
        "nose_side_r": 0.1, "nostril_l": 0.2, "nostril_r": 0.2, "lip_outer": 0.08,
        "lip_inner": 0.06, "hair_back": -0.7, "ear_l": -0.15, "ear_r": -0.15,
        "glasses_l": 0.2, "glasses_r": 0.2, "glasses_bridge": 0.3, "hair_front": 0.05,
        "nose_wrinkle": 0.12,
    }
    for name, value in offsets.items():
        z[groups[name]] += value
    return z.astype(np.float32)


def _spline(poly: np.ndarray, steps: int = 4) -> np.ndarray:
    """A closed Catmull-Rom curve through the points of a polygon (it keeps every point)."""
    p1 = poly.astype(np.float32)
    p0, p2, p3 = np.roll(p1, 1, 0), np.roll(p1, -1, 0), np.roll(p1, -2, 0)
    t = (np.arange(steps, dtype=np.float32) / steps)[:, None, None]
    curve = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t * t
                   + (3 * p1 - p0 - 3 * p2 + p3) * t * t * t)
    return np.round(curve.transpose(1, 0, 2).reshape(-1, 2)).astype(np.int32)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                              math.cos(roll), math.sin(roll))
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return (rz @ rx @ ry).astype(np.float32)


def _mix(a, b, t: float) -> tuple[float, ...]:
    t = min(max(t, 0.0), 1.0)
    return tuple(float(u * (1 - t) + v * t) for u, v in zip(a, b))


def _background(ident: Identity, size: int) -> np.ndarray:
    """The static layer of an identity: background texture, neck and shoulders."""
    rng = np.random.default_rng(ident.texture_seed)
    c0, c1 = (np.array(c, np.float32) for c in ident.background_colours)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if ident.background == "solid":
        t = np.zeros_like(xx)
    elif ident.background == "gradient":
        t = yy if rng.uniform() < 0.5 else xx
    elif ident.background == "stripes":
        period, angle = rng.uniform(0.08, 0.25), rng.uniform(0, np.pi)
        t = (np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period) > 0) * 0.8
    elif ident.background == "noise":
        t = cv2.resize(rng.uniform(0, 1, (5, 5)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC).clip(0, 1)
    else:
        period = rng.uniform(0.1, 0.2)
        d = np.hypot((xx % period) / period - 0.5, (yy % period) / period - 0.5)
        t = (d < 0.25) * 0.8
    layer = c0 * (1 - t[..., None]) + c1 * t[..., None]
    layer = np.ascontiguousarray(layer.clip(0, 255).astype(np.uint8))
    unit, (cx, cy) = ident.scale * size, _origin(ident, size)

    def px(points) -> np.ndarray:
        pts = np.asarray(points, np.float32) * unit + (cx, cy)
        return np.round(pts * _ONE).astype(np.int32)

    neck = [(-0.36, 0.4), (0.36, 0.4), (0.4, 1.35), (-0.4, 1.35)]
    cv2.fillPoly(layer, [px(neck)], _mix(ident.skin, (0, 0, 0), 0.18), cv2.LINE_AA, _SHIFT)
    shirt = [(-1.6, 2.0), (-1.45, 1.35), (-0.9, 1.12), (-0.38, 1.05), (0.0, 1.3), (0.38, 1.05),
             (0.9, 1.12), (1.45, 1.35), (1.6, 2.0)]
    cv2.fillPoly(layer, [px(shirt)], ident.shirt, cv2.LINE_AA, _SHIFT)
    return layer


def _origin(ident: Identity, size: int) -> tuple[float, float]:
    return (0.5 + ident.center[0]) * size, (0.5 + ident.center[1]) * size


class FaceRenderer:
    """Draw one identity at one size; :meth:`render` turns AUs, visemes and pose into pixels.

    Args:
        identity: who to draw (see :func:`moee.data.synth.identity.sample_identity`).
        size: square image side in pixels, 32..512.
    """

    def __init__(self, identity: Identity, size: int = 64):
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"size must be in {MIN_SIZE}..{MAX_SIZE} px, got {size}")
        self.identity, self.size = identity, size
        zero = _geometry(identity, np.zeros(len(CONTROLS), np.float32))
        self.groups = zero.groups
        self._base = zero.array()
        basis = []
        for i in range(len(CONTROLS)):
            unit = np.zeros(len(CONTROLS), np.float32)
            unit[i] = 1
            basis.append(_geometry(identity, unit).array() - self._base)
        self._basis = np.stack(basis).reshape(len(CONTROLS), -1)
        self._depth = _depth(self._base, self.groups)
        self._lmk = _landmark_index(self.groups)
        self._layer = _background(identity, size)
        self._unit = identity.scale * size
        self._origin = np.array(_origin(identity, size), np.float32)
        self._pivot = np.array([0.0, 0.25, -0.45], np.float32)
        self._lid_ratio = identity.eye_lower / identity.eye_upper
        self._thin = max(1, round(size / 96))
        self._curve = _spline if size >= 128 else np.asarray  # smooth outlines where visible
        self._colours(identity)
        g = self.groups
        self._pairs_inner = (np.array([g["lip_inner"].start + i for i in (1, 2, 3)]),
                             np.array([g["lip_inner"].start + i for i in (7, 6, 5)]))
        outer = g["lip_outer"].start
        self._pairs_outer_up = np.array([outer + i for i in (2, 3, 4)])
        self._pairs_outer_low = np.array([outer + i for i in (10, 9, 8)])

    def _colours(self, ident: Identity) -> None:
        skin = ident.skin
        self._skin = skin
        self._shade = _mix(skin, (0, 0, 0), 0.1)
        self._line_dark = _mix(skin, (20, 10, 10), 0.55)
        self._ear = _mix(skin, (0, 0, 0), 0.08)
        self._blush = _mix(skin, (220, 80, 90), 0.5)
        self._nostril = _mix(skin, (20, 5, 5), 0.6)
        self._lash = _mix(ident.hair_colour, (10, 8, 8), 0.7)
        buzz = ident.hair_style == "buzz"
        self._hair = _mix(ident.hair_colour, skin, 0.35) if buzz else ident.hair_colour
        self._hair_back = _mix(ident.hair_colour, (0, 0, 0), 0.25)
        self._beard = _mix(ident.hair_colour, skin, 0.3)

    def _points(self, aus: np.ndarray, viseme: np.ndarray, gaze: tuple[float, float]) -> np.ndarray:
        """Face-unit 2D points for one frame, with lids, lips and irises clamped."""
        c = _controls(aus, viseme, gaze, self._lid_ratio)
        pts = (self._base.reshape(-1) + c @ self._basis).reshape(-1, 2)
        up, low = self._pairs_inner
        pts[low, 1] = np.maximum(pts[low, 1], pts[up, 1])
        pts[self._pairs_outer_up, 1] = np.minimum(pts[self._pairs_outer_up, 1], pts[up, 1] - 0.012)
        pts[self._pairs_outer_low, 1] = np.maximum(pts[self._pairs_outer_low, 1],
                                                   pts[low, 1] + 0.015)
        g = self.groups
        for side in ("l", "r"):
            upper, lower = pts[g[f"upper_{side}"]], pts[g[f"lower_{side}"]]
            for name in (f"iris_{side}", f"pupil_{side}"):
                circle = pts[g[name]]
                top = np.interp(circle[:, 0], upper[:, 0], upper[:, 1])
                bottom = np.interp(circle[:, 0], lower[:, 0], lower[:, 1])
                circle[:, 1] = np.clip(circle[:, 1], top, np.maximum(top, bottom))
                circle[:, 0] = np.clip(circle[:, 0], upper[0, 0], upper[-1, 0])
        return pts

    def _project(self, pts: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Rotate by (yaw, pitch, roll) radians about the neck pivot; pixels (float)."""
        xyz = np.concatenate([pts, self._depth[:, None]], 1) - self._pivot
        rotated = xyz @ _rotation(*pose).T + self._pivot
        return rotated[:, :2] * self._unit + self._origin

    def render(self, aus, viseme=(0.0, 0.0, 0.0), pose=(0.0, 0.0, 0.0),
               gaze: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
        """Draw one frame.

        Args:
            aus: 17 AU intensities in [0, 1] (order of ``moee.emotions.ACTION_UNITS``).
            viseme: (jaw, round, spread) of speech in [0, 1]; combined with AU25/AU26 as
                :func:`combine_speech` describes.
            pose: head (yaw, pitch, roll) in radians; small angles (< 0.3) look right.
            gaze: iris offset (x, y) in about [-1, 1].

        Returns:
            ``(size, size, 3) uint8`` RGB frame and ``(68, 2) float32`` iBUG landmarks in [0, 1].
        """
        aus = combine_speech(np.asarray(aus, np.float32), np.asarray(viseme, np.float32))
        pts = self._points(aus, np.asarray(viseme, np.float32), gaze)
        pix = self._project(pts, np.asarray(pose, np.float32))
        frame = self._draw(np.round(pix * _ONE).astype(np.int32), pts, aus)
        return frame, (pix[self._lmk] / self.size).astype(np.float32)

    def render_sequence(self, aus: np.ndarray, visemes: np.ndarray, poses: np.ndarray,
                        gaze: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
        """Draw T frames from (T, 17) AUs, (T, 3) visemes and (T, 3) poses.

        Returns ``(T, size, size, 3) uint8`` frames and ``(T, 68, 2) float32`` landmarks.
        """
        out = [self.render(a, v, p, gaze) for a, v, p in zip(aus, visemes, poses)]
        return np.stack([f for f, _ in out]), np.stack([lmk for _, lmk in out])

    def _draw(self, p: np.ndarray, pts: np.ndarray, aus: np.ndarray) -> np.ndarray:
        """Rasterise one frame from integer sub-pixel points ``p`` (and face-unit ``pts``)."""
        g, a = self.groups, {name: float(aus[i]) for name, i in _AU.items()}
        img = self._layer.copy()
        aa, fill = cv2.LINE_AA, cv2.fillPoly

        def poly(*names: str) -> list[np.ndarray]:
            return [p[g[n]] for n in names]

        def lines(names: tuple[str, ...], strength: float, thickness: int = self._thin,
                  per_line: int = 0) -> None:
            if strength < 0.12:
                return
            colour = _mix(self._skin, self._line_dark, strength)
            parts = []
            for n in names:
                seg = p[g[n]]
                parts += [seg] if not per_line else list(seg.reshape(-1, per_line, 2))
            cv2.polylines(img, parts, False, colour, thickness, aa, _SHIFT)

        curve = self._curve
        if len(p[g["hair_back"]]):
            fill(img, [curve(p[g["hair_back"]])], self._hair_back, aa, _SHIFT)
        fill(img, [curve(q) for q in poly("ear_l", "ear_r")], self._ear, aa, _SHIFT)
        fill(img, [curve(np.concatenate([p[g["jaw"]], p[g["forehead"]]]))], self._skin, aa,
             _SHIFT)
        blush = self.identity.blush + 0.55 * a["AU6"] + 0.2 * a["AU12"]
        if blush > 0.05:
            fill(img, poly("cheek_l", "cheek_r"), _mix(self._skin, self._blush, blush), aa, _SHIFT)
        if self.identity.beard:
            jaw = p[g["jaw"]][3:14]
            fill(img, [np.concatenate([jaw, p[g["beard_top"]]])], self._beard, aa, _SHIFT)
        fill(img, [np.concatenate([p[g["nose_side_l"]], p[g["nostril_base"]],
                                   p[g["nose_side_r"]]])], self._shade, aa, _SHIFT)
        fill(img, poly("nostril_l", "nostril_r"), self._nostril, aa, _SHIFT)
        lines(("furrow",), 1.3 * a["AU4"], per_line=2)
        lines(("nose_wrinkle",), 0.7 * a["AU9"], per_line=3)
        lines(("fold_l", "fold_r"), max(0.15, 0.9 * a["AU12"], a["AU10"], 0.6 * a["AU9"]))
        lines(("crows_l", "crows_r"), 0.9 * a["AU6"], per_line=2)
        lines(("forehead_lines",), 0.8 * max(a["AU1"], a["AU2"]), per_line=5)
        lines(("chin_line",), a["AU17"])
        self._draw_eyes(img, p, poly)
        brows = [np.concatenate([q, q[::-1] + (0, 0)]) for q in poly("brow_l", "brow_r")]
        half = self.identity.brow_thickness * self._unit * _ONE / 2
        taper = np.array([0.55, 1.0, 1.0, 1.0, 0.75])
        for brow, t in zip(brows, (taper, taper[::-1])):
            brow[:5, 1] -= np.round(half * t).astype(np.int32)
            brow[5:, 1] += np.round(half * t[::-1]).astype(np.int32)
        fill(img, brows, self.identity.brow_colour, aa, _SHIFT)
        self._draw_mouth(img, p, pts)
        if len(p[g["hair_front"]]):
            fill(img, [curve(p[g["hair_front"]])], self._hair, aa, _SHIFT)
        if self.identity.glasses is not None:
            cv2.polylines(img, poly("glasses_l", "glasses_r"), True, self.identity.glasses,
                          self._thin, aa, _SHIFT)
            cv2.polylines(img, poly("glasses_bridge"), False, self.identity.glasses, self._thin,
                          aa, _SHIFT)
        return img

    def _draw_eyes(self, img: np.ndarray, p: np.ndarray, poly) -> None:
        g, aa = self.groups, cv2.LINE_AA
        whites = [np.concatenate([p[g[f"upper_{s}"]], p[g[f"lower_{s}"]][-2:0:-1]])
                  for s in ("l", "r")]
        cv2.fillPoly(img, whites, _SCLERA, aa, _SHIFT)
        cv2.fillPoly(img, poly("iris_l", "iris_r"), self.identity.eye_colour, aa, _SHIFT)
        cv2.fillPoly(img, poly("pupil_l", "pupil_r"), (12, 10, 10), aa, _SHIFT)
        cv2.polylines(img, poly("upper_l", "upper_r"), False, self._lash, self._thin, aa, _SHIFT)
        cv2.polylines(img, poly("crease_l", "crease_r", "lower_l", "lower_r"), False,
                      self._shade, max(1, self._thin // 2), aa, _SHIFT)

    def _draw_mouth(self, img: np.ndarray, p: np.ndarray, pts: np.ndarray) -> None:
        g, aa = self.groups, cv2.LINE_AA
        outer, inner = p[g["lip_outer"]], p[g["lip_inner"]]
        cv2.fillPoly(img, [self._curve(outer)], self.identity.lips, aa, _SHIFT)
        inner_pts = pts[g["lip_inner"]]
        gap = np.concatenate([[0.0], inner_pts[[7, 6, 5], 1] - inner_pts[[1, 2, 3], 1], [0.0]])
        if gap.max() * self._unit < 0.6:
            cv2.polylines(img, [inner[:5]], False, _mix(self.identity.lips, _MOUTH, 0.7),
                          self._thin, aa, _SHIFT)
            return
        cv2.fillPoly(img, [self._curve(inner)], _MOUTH, aa, _SHIFT)
        top = inner[:5]
        direction = p[g["lip_inner"]][[0, 7, 6, 5, 4]] - top
        scale = np.minimum(_TEETH_HEIGHT, gap) / np.maximum(gap, 1e-6)
        teeth = top + np.round(direction * scale[:, None]).astype(np.int32)
        cv2.fillPoly(img, [np.concatenate([top, teeth[::-1]])], _TEETH, aa, _SHIFT)
        low_h = np.clip(gap - 0.08, 0, 0.035)
        if low_h.max() > 0:
            bottom = p[g["lip_inner"]][[0, 7, 6, 5, 4]]
            lift = np.round(-direction * (low_h / np.maximum(gap, 1e-6))[:, None]).astype(np.int32)
            cv2.fillPoly(img, [np.concatenate([bottom, (bottom + lift)[::-1]])], _TEETH, aa,
                         _SHIFT)
