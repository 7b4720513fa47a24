"""Faces in video: detection, a stable square crop per clip, iBUG-68 landmarks, the mouth mask.

Detectors follow one small interface (:class:`FaceDetector`): MediaPipe's bundled face detector
(:class:`MediaPipeFaceDetector`, the default, as the paper uses MediaPipe) and OpenCV's Haar
cascade (:class:`HaarFaceDetector`, the fallback). Landmarks come from MediaPipe's 478-point
face mesh mapped onto the 68 iBUG points (:data:`MEDIAPIPE_TO_IBUG68`). All coordinates that
leave this module are ``(x, y)`` in ``[0, 1]`` of the image they were measured on.
MediaPipe is imported only when a MediaPipe object is built, so :func:`mouth_mask` and the
crop helpers are cheap to import in data-loader workers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

import cv2
import numpy as np

MOUTH = slice(48, 68)
"""iBUG-68 indices of the mouth (outer lip 48–59, inner lip 60–67)."""
OUTER_LIP = slice(48, 60)

MEDIAPIPE_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # jaw 0-16, from the subject's right (image left) over the chin (8)
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,),
    (400,), (379,), (365,), (397, 288), (361,), (323,), (454,), (356,),
    # brows 17-21 (right), 22-26 (left)
    (70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,), (293,), (300,),
    # nose bridge 27-30, nostrils 31-35
    (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    # right eye 36-41, left eye 42-47
    (33,), (160,), (158,), (133,), (153,), (144,), (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lip 48-59
    (61,), (40,), (37,), (0,), (267,), (270,), (291,), (321,), (314,), (17,), (84,), (91,),
    # inner lip 60-67
    (78,), (81,), (13,), (311,), (308,), (402,), (14,), (178,),
)
"""For each iBUG-68 point, the MediaPipe face-mesh points whose mean it is."""


def mesh_to_ibug68(mesh: np.ndarray) -> np.ndarray:
    """Map ``(..., 468 or 478, 2+)`` MediaPipe face-mesh points to ``(..., 68, 2)`` iBUG points."""
    mesh = np.asarray(mesh, dtype=np.float32)[..., :2]
    return np.stack([mesh[..., list(ids), :].mean(axis=-2) for ids in MEDIAPIPE_TO_IBUG68], -2)


@dataclass(frozen=True)
class FaceBox:
    """A detected face: corners in pixels and the detector's confidence."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def center(self) -> tuple[float, float]:
        """The box centre ``(x, y)`` in pixels."""
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    @property
    def side(self) -> float:
        """The longer side in pixels."""
        return max(self.x1 - self.x0, self.y1 - self.y0)


class FaceDetector(Protocol):
    """Finds the faces in one RGB image ``(H, W, 3) uint8``."""

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """All faces found, best first."""
        ...


NATIVE_LOGS = {"show": False}
"""Whether MediaPipe's native start-up logging (TensorFlow Lite, absl) reaches stderr;
``python -m moee animate --verbose`` sets it."""


@contextmanager
def native_logs_quieted() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to /dev/null for the block (unless
    ``NATIVE_LOGS["show"]``): MediaPipe's C++ prints its start-up lines there, past Python's
    ``sys.stderr``, so an error would otherwise follow three lines of noise."""
    if NATIVE_LOGS["show"]:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class MediaPipeFaceDetector:
    """MediaPipe's bundled BlazeFace detector (full-range model: faces near and far)."""

    def __init__(self, min_confidence: float = 0.5):
        with native_logs_quieted():
            import mediapipe as mp

            self._model = mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=min_confidence
            )

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """All faces found, best first."""
        height, width = image.shape[:2]
        with native_logs_quieted():
            result = self._model.process(np.ascontiguousarray(image))
        boxes = []
        for detection in result.detections or []:
            rel = detection.location_data.relative_bounding_box
            x0, y0 = rel.xmin * width, rel.ymin * height
            boxes.append(FaceBox(x0, y0, x0 + rel.width * width, y0 + rel.height * height,
                                 float(detection.score[0])))
        return sorted(boxes, key=lambda box: -box.score)


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade: no neural network, a fallback that always loads."""

    def __init__(self, min_neighbors: int = 5, min_size: int = 24):
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._model = cv2.CascadeClassifier(path)
        if self._model.empty():
            raise RuntimeError(f"OpenCV could not load its Haar cascade from {path}")
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """All faces found, largest first (the cascade gives no score)."""
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        found = self._model.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        boxes = [FaceBox(x, y, x + w, y + h) for x, y, w, h in np.asarray(found).reshape(-1, 4)]
        return sorted(boxes, key=lambda box: -box.side)


DetectorName = Literal["mediapipe", "haar"]


def make_detector(name: DetectorName = "mediapipe") -> FaceDetector:
    """Build a detector by name: ``"mediapipe"`` (default) or ``"haar"`` (OpenCV fallback)."""
    if name == "mediapipe":
        return MediaPipeFaceDetector()
    if name == "haar":
        return HaarFaceDetector()
    raise ValueError(f"unknown face detector {name!r}; valid: mediapipe, haar")


class FaceMeshLandmarker:
    """MediaPipe's 478-point face mesh, tracked over a clip and mapped to iBUG-68."""

    def __init__(self, min_confidence: float = 0.5):
        with native_logs_quieted():
            import mediapipe as mp

            self._model = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence,
            )

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks of ``(T, H, W, 3)`` frames: ``(T, 68, 2)`` in [0, 1] and a ``(T,)`` found mask.

        Frames where the mesh finds no face get NaN; :func:`fill_missing` interpolates them.
        """
        points = np.full((len(frames), 68, 2), np.nan, dtype=np.float32)
        for index, frame in enumerate(frames):
            with native_logs_quieted():
                result = self._model.process(np.ascontiguousarray(frame))
            if result.multi_face_landmarks:
                mesh = np.array([(p.x, p.y) for p in result.multi_face_landmarks[0].landmark])
                points[index] = mesh_to_ibug68(mesh)
        return points, ~np.isnan(points[:, 0, 0])


def fill_missing(landmarks: np.ndarray) -> np.ndarray:
    """Linearly interpolate NaN frames of ``(T, K, 2)`` landmarks from the found ones."""
    found = ~np.isnan(landmarks[:, 0, 0])
    if found.all() or not found.any():
        return landmarks
    t = np.arange(len(landmarks))
    flat = landmarks.reshape(len(landmarks), -1)
    filled = np.stack([np.interp(t, t[found], flat[found, c]) for c in range(flat.shape[1])], 1)
    return filled.reshape(landmarks.shape).astype(np.float32)


def stable_square_box(
    boxes: list[FaceBox], image_size: tuple[int, int], scale: float = 1.8
) -> tuple[int, int, int]:
    """One square crop for a whole clip from its per-frame detections: ``(x0, y0, side)`` pixels.

    The centre is the median of the detection centres and the side ``scale`` times the 90th
    percentile of the detected sizes, so jitter of single detections does not move the crop
    and the head stays inside it while it moves. The box may extend past the image; see
    :func:`crop_square`. ``image_size`` is ``(height, width)``.
    """
    if not boxes:
        raise ValueError("no face boxes to build a crop from")
    centers = np.array([box.center for box in boxes])
    cx, cy = np.median(centers, axis=0)
    side = scale * float(np.percentile([box.side for box in boxes], 90))
    side = int(round(min(side, 2 * max(image_size))))
    side += side % 2
    # the face sits slightly above the crop centre: hair above, chin and neck below
    return int(round(cx - side / 2)), int(round(cy - 0.45 * side)), side


def crop_square(frames: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """Cut the square ``box`` out of ``(T, H, W, 3)`` frames (edges replicated) at ``size`` px."""
    x0, y0, side = box
    height, width = frames.shape[1:3]
    pad = max(0, -x0, -y0, x0 + side - width, y0 + side - height)
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for index, frame in enumerate(frames):
        if pad:
            frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        patch = frame[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        out[index] = cv2.resize(patch, (size, size), interpolation=interpolation)
    return out


def mouth_mask(landmarks: np.ndarray, size: int, dilation: float = 0.08) -> np.ndarray:
    """The mouth region of one face as a ``(size, size)`` bool mask.

    ``landmarks`` are iBUG-68 points in [0, 1]; the mask is the filled polygon of the outer
    lip (points 48–59), grown by ``dilation`` × ``size`` pixels so lips in motion stay covered.
    """
    polygon = np.asarray(landmarks, dtype=np.float64)[OUTER_LIP] * size
    if not np.isfinite(polygon).all():
        raise ValueError("mouth landmarks contain NaN; fill missing landmarks first")
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32).reshape(-1, 1, 2)], 1)
    radius = int(round(dilation * size))
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.dilate(mask, kernel)
    return mask.astype(bool)
