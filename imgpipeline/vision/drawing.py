"""Annotated derivative images: boxes and labels drawn on a copy of the frame."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import cv2
import numpy as np

from imgpipeline.vision.detection import Detection


def draw_detections(image: np.ndarray, detections: Iterable[Detection],
                    label: Callable[[Detection], str] | None = None) -> np.ndarray:
    """A copy with each detection's box and label (`label(d)`, else its class and confidence), coloured by
    its class id (by its name when it has none)."""
    canvas = image.copy()
    for d in detections:
        x, y, w, h = d.box
        color = _color(d.class_id if d.class_id is not None else sum(d.class_name.encode()) % 80)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), color, 2)
        text = label(d) if label else f"{d.class_name} {d.confidence:.2f}"
        cv2.putText(canvas, text, (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1,
                    cv2.LINE_AA)
    return canvas


def _color(class_id: int) -> tuple[int, int, int]:
    # A stable, distinct colour per class.
    return ((class_id * 67) % 256, (class_id * 131 + 80) % 256, (class_id * 199 + 160) % 256)


def highlight(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The subject of an alert: a thick white frame around its box, on the annotated copy."""
    x, y, w, h = box
    cv2.rectangle(image, (x - 3, y - 3), (x + w + 3, y + h + 3), (255, 255, 255), 3)
    return image


def crop(image: np.ndarray, box: tuple[int, int, int, int], margin: float = 0.2) -> np.ndarray:
    """The box with a margin around it, clipped to the image."""
    x, y, w, h = box
    height, width = image.shape[:2]
    dx, dy = int(w * margin), int(h * margin)
    left, top = max(0, x - dx), max(0, y - dy)
    right, bottom = min(width, x + w + dx), min(height, y + h + dy)
    if right <= left or bottom <= top:
        return image
    return image[top:bottom, left:right].copy()


def thumbnail(image: np.ndarray, width: int = 240) -> np.ndarray:
    """A copy at most `width` pixels wide, aspect kept."""
    height, current = image.shape[:2]
    if current <= width:
        return image
    return cv2.resize(image, (width, max(1, round(height * width / current))), interpolation=cv2.INTER_AREA)
