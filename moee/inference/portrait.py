"""The portrait as users have it: any image file → one square face crop, and back again.

:func:`load_image` reads any common format and mode (RGBA composited on a background,
greyscale, palette, CMYK, 16-bit, EXIF-rotated) and downscales very large photos;
:func:`prepare_portrait` finds exactly one face with the real detector
(:mod:`moee.data.faces`) and cuts the square crop the model animates; :meth:`Portrait.paste`
blends generated crops back into the original photo with a feathered edge.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from moee.data.batch import from_numpy_frames
from moee.data.faces import (
    DetectorName,
    FaceDetector,
    crop_square,
    make_detector,
    stable_square_box,
)
from moee.errors import BadInputError

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray


class InputError(BadInputError, ValueError):
    """An input the pipeline cannot animate; the message says why in one line."""


@dataclass(frozen=True)
class PortraitSettings:
    """How the face is found and cropped, and how the result is framed.

    Attributes:
        detect: find the face; ``False`` takes the image's centre square as the face crop
            (images that already are face crops, e.g. SynthEmo or data-set frames).
        detector: face detector, ``"mediapipe"`` (default) or ``"haar"`` (OpenCV).
        margin: crop side as a multiple of the detected face size.
        min_face_ratio: faces smaller than this fraction of the largest one are background
            faces and ignored; two or more faces above it are an error.
        paste_back: paste the generated face back into the original photo (feathered);
            ``False`` keeps the square crop as the output.
        feather: width of the blending ramp at the crop's edge, as a fraction of its side.
        max_side: photos with a longer side are downscaled to it first.
        background: RGB colour that transparent pixels are composited on.
    """

    detect: bool = True
    detector: DetectorName = "mediapipe"
    margin: float = 1.8
    min_face_ratio: float = 0.33
    paste_back: bool = False
    feather: float = 0.1
    max_side: int = 2048
    background: tuple[int, int, int] = (255, 255, 255)


def _describe(source: ImageSource) -> str:
    if isinstance(source, str | os.PathLike):
        return repr(os.fspath(source))
    return f"the {type(source).__name__} image"


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float greyscale
        values = np.asarray(image, dtype=np.float32)
        peak = max(float(values.max()), 1.0)
        image = Image.fromarray((values / peak * 255).round().astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        canvas = Image.new("RGBA", image.size, (*background, 255))
        return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")  # L, P, CMYK, YCbCr, 1 ...


def load_image(
    source: ImageSource,
    max_side: int = 2048,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Any image (path, bytes, PIL image or ``(H, W[, 3|4])`` uint8 array) → ``(H, W, 3) uint8``.

    EXIF orientation is applied, transparency is composited on ``background`` and images
    whose longer side exceeds ``max_side`` are downscaled. Raises :class:`InputError`.
    """
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise InputError(f"an image array must be (H, W[, C]) uint8, got {source.shape} "
                             f"{source.dtype}")
        image = Image.fromarray(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        try:
            handle = io.BytesIO(source) if isinstance(source, bytes) else source
            image = Image.open(handle)
            image.load()
        except (UnidentifiedImageError, OSError, ValueError) as error:
            reason = "not an image file" if isinstance(error, UnidentifiedImageError) else error
            raise InputError(f"cannot read image {_describe(source)}: {reason}") from None
    image = _to_rgb(ImageOps.exif_transpose(image), background)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8).copy()


@dataclass
class Portrait:
    """One photo, its face box and the square crop the model animates.

    Attributes:
        image: the photo ``(H, W, 3) uint8`` (oriented, downscaled).
        box: the square crop ``(x0, y0, side)`` in the photo's pixels (may extend past it).
        crop: ``(size, size, 3) uint8``.
    """

    image: np.ndarray
    box: tuple[int, int, int]
    crop: np.ndarray

    def reference(self) -> torch.Tensor:
        """The crop as the model's reference image, ``(3, size, size)`` in [-1, 1]."""
        return from_numpy_frames(self.crop)

    def paste(self, frames: np.ndarray, feather: float = 0.1) -> np.ndarray:
        """Blend generated crops ``(T, size, size, 3)`` into the photo: ``(T, H', W', 3) uint8``.

        The crop is resized to the box and blended with a linear ramp of ``feather`` × side
        pixels at its edges. ``H'``, ``W'`` are the photo's size rounded down to even numbers
        (H.264 needs even sizes).
        """
        x0, y0, side = self.box
        height, width = (s - s % 2 for s in self.image.shape[:2])
        ramp = np.clip((np.arange(side) + 0.5) / max(feather * side, 1e-6), 0, 1)
        edge = np.minimum(ramp, ramp[::-1])
        alpha = np.minimum.outer(edge, edge)[..., None].astype(np.float32)  # side side 1
        # the part of the box inside the (even) photo, in photo and in box coordinates
        px0, py0 = max(x0, 0), max(y0, 0)
        px1, py1 = min(x0 + side, width), min(y0 + side, height)
        window = (slice(py0 - y0, py1 - y0), slice(px0 - x0, px1 - x0))
        alpha = alpha[window]
        background = self.image[py0:py1, px0:px1].astype(np.float32)
        out = np.repeat(self.image[None, :height, :width], len(frames), axis=0)
        for index, frame in enumerate(frames):
            face = cv2.resize(frame, (side, side), interpolation=cv2.INTER_CUBIC)[window]
            blended = alpha * face.astype(np.float32) + (1 - alpha) * background
            out[index, py0:py1, px0:px1] = np.clip(blended.round(), 0, 255).astype(np.uint8)
        return out


def prepare_portrait(
    image: np.ndarray,
    size: int,
    settings: PortraitSettings | None = None,
    detector: FaceDetector | None = None,
    name: str = "the image",
) -> Portrait:
    """Find exactly one face in ``image`` ``(H, W, 3) uint8`` and crop a ``size`` px square.

    Raises :class:`InputError` when no face, or several faces of similar size, are found.
    With ``settings.detect`` off, the centre square of the image is the crop.
    """
    settings = settings or PortraitSettings()
    if not settings.detect:
        height, width = image.shape[:2]
        side = min(height, width)
        box = ((width - side) // 2, (height - side) // 2, side)
        return Portrait(image=image, box=box, crop=crop_square(image[None], box, size)[0])
    detector = detector or make_detector(settings.detector)
    boxes = detector.detect(image)
    if not boxes:
        raise InputError(f"no face found in {name}; give a portrait with one clearly visible face")
    largest = max(box.side for box in boxes)
    faces = [box for box in boxes if box.side >= settings.min_face_ratio * largest]
    if len(faces) > 1:
        raise InputError(f"{len(faces)} faces found in {name}; crop the image to the one person "
                         "to animate")
    box = stable_square_box(faces, image.shape[:2], scale=settings.margin)
    return Portrait(image=image, box=box, crop=crop_square(image[None], box, size)[0])
