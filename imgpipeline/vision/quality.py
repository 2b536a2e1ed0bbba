"""Decoding and image-quality metrics: pure functions over numpy arrays."""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np

# Frames darker than this mean brightness (0–255) skip detection unless a run says otherwise.
DARK_THRESHOLD = 20.0


class UndecodableImage(ValueError):
    """The bytes are not an image OpenCV can decode."""


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) as the image's header declares them, read without decoding the pixels;
    UndecodableImage when no known image header is there."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError:  # over twice Pillow's own limit (179 MP): no camera frame
        raise UndecodableImage(f"image declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, "
                               "over any limit (a decompression bomb)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UndecodableImage(
            f"cannot decode {len(data)} bytes as an image: no known image header") from None
    except Exception as exc:  # a format plugin's own error on a hostile header (a DDS of an unknown
        # pixel format: NotImplementedError; a SPIDER header with an infinite field: OverflowError)
        raise UndecodableImage(f"cannot read the image header of {len(data)} bytes: "
                               f"{type(exc).__name__}: {str(exc)[:200]}") from None


def decode_image(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode JPEG/PNG/... bytes into a BGR array, or raise UndecodableImage.

    With max_pixels, an image whose header declares more pixels is refused before any pixel is
    decoded: a few hundred KB of PNG can declare 20000×20000 (1.2 GB decoded).
    """
    if not data:
        raise UndecodableImage("empty payload")
    if max_pixels is not None:
        size = header_size(data)
        if size[0] * size[1] > max_pixels:
            raise UndecodableImage(f"image declares {size[0]}x{size[1]} pixels, over the limit of "
                                   f"{max_pixels:,}")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. a header OpenCV refuses outright
        reason = str(exc).strip()[:200]
        raise UndecodableImage(f"cannot decode {len(data)} bytes as an image: {reason}") from None
    if image is None or image.size == 0:
        raise UndecodableImage(f"cannot decode {len(data)} bytes as an image")
    return image


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buffer.tobytes()


@dataclass(frozen=True)
class Quality:
    """Brightness and contrast: mean and standard deviation of the grey image (0..255);
    sharpness: variance of its Laplacian (higher is sharper)."""

    brightness: float
    contrast: float
    sharpness: float


def measure_quality(image: np.ndarray) -> Quality:
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    mean, std = cv2.meanStdDev(grey)
    # The Laplacian of 8-bit pixels fits 16 bits exactly; OpenCV's own variance is 4x faster
    # than a float64 image and numpy's var, with the same result.
    _, spread = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S))
    return Quality(
        brightness=round(float(mean[0][0]), 3),
        contrast=round(float(std[0][0]), 3),
        sharpness=round(float(spread[0][0]) ** 2, 3),
    )
