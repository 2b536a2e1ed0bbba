"""Annotated derivative images: boxes and labels drawn on a copy of the frame."""

from __future__ import annotations

import cv2
import numpy as np


def draw_detections(image: np.ndarray, detections) -> np.ndarray:
    canvas = image.copy()
    for d in detections:
        x, y, w, h = d.box
        color = _color(d.class_id)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), color, 2)
        label = f"{d.class_name} {d.confidence:.2f}"
        cv2.putText(canvas, label, (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1,
                    cv2.LINE_AA)
    return canvas


def _color(class_id: int) -> tuple[int, int, int]:
    # A stable, distinct colour per class.
    return ((class_id * 67) % 256, (class_id * 131 + 80) % 256, (class_id * 199 + 160) % 256)
