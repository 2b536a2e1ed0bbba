"""YOLOv4-tiny through OpenCV DNN: load once, detect many frames."""

from __future__ import annotations

import queue
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class Detection:
    class_id: int
    class_name: str
    confidence: float
    box: tuple[int, int, int, int]  # x, y, w, h in pixels of the original frame

    def as_record(self) -> dict:
        record = asdict(self)
        record["box"] = list(self.box)
        return record


class YoloDetector:
    """A Darknet YOLO model in OpenCV DNN with NMS and an optional class filter."""

    def __init__(
        self,
        cfg: Path,
        weights: Path,
        names: Path,
        *,
        input_size: int = 416,
        confidence: float = 0.25,
        nms: float = 0.45,
        classes: Iterable[str] | None = None,
    ):
        if input_size % 32:
            raise ValueError(f"input size must be a multiple of 32, got {input_size}")
        self.class_names = [n.strip() for n in Path(names).read_text().splitlines() if n.strip()]
        unknown = set(classes or ()) - set(self.class_names)
        if unknown:
            raise ValueError(f"unknown class names {sorted(unknown)}; see {names}")
        self.keep = {self.class_names.index(c) for c in classes} if classes else None
        self.input_size = input_size
        self.confidence = confidence
        self.nms = nms
        net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.model = cv2.dnn.DetectionModel(net)
        self.model.setInputParams(
            scale=1 / 255.0, size=(input_size, input_size), swapRB=True, crop=False
        )
        self.name = f"yolov4-tiny-{input_size}"

    def detect(self, image: np.ndarray) -> list[Detection]:
        class_ids, confidences, boxes = self.model.detect(
            image, confThreshold=self.confidence, nmsThreshold=self.nms
        )
        found = []
        for class_id, confidence, box in zip(
            np.asarray(class_ids).reshape(-1),
            np.asarray(confidences).reshape(-1),
            np.asarray(boxes).reshape(-1, 4),
            strict=True,
        ):
            class_id = int(class_id)
            if self.keep is not None and class_id not in self.keep:
                continue
            found.append(
                Detection(
                    class_id=class_id,
                    class_name=self.class_names[class_id],
                    confidence=round(float(confidence), 4),
                    box=tuple(int(v) for v in box),
                )
            )
        found.sort(key=lambda d: (-d.confidence, d.class_id, d.box))
        return found


class DetectorPool:
    """Detectors shared by threads, one frame each at a time.

    OpenCV DNN releases the GIL while it works, and on few cores several single-threaded nets
    keep the CPU busier than one net using every core (14 against 12 frames/s on 2 cores).
    """

    def __init__(self, detectors: Sequence[YoloDetector]):
        if not detectors:
            raise ValueError("a detector pool needs at least one detector")
        self.size = len(detectors)
        self.name = detectors[0].name
        self._idle: queue.SimpleQueue[YoloDetector] = queue.SimpleQueue()
        for detector in detectors:
            self._idle.put(detector)

    def detect(self, image: np.ndarray) -> list[Detection]:
        detector = self._idle.get()
        try:
            return detector.detect(image)
        finally:
            self._idle.put(detector)
