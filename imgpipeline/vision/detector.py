"""A YOLO model on any engine: one pre-processing, one decoding per layout and one NMS; only inference
differs.

Pre-processing is OpenCV's `blobFromImage` (a plain resize, RGB, 1/255). Darknet heads decode as
OpenCV's region layer and `DetectionModel` do, step by step (the same box truncation, per-class NMS by
`cv2.dnn.NMSBoxes`), so the `opencv` engine gives exactly what `DetectionModel` gives and the other
engines differ from it only by what their inference computes. ONNX exports in the YOLOv5 and YOLOv8
layouts decode to the same rows and go through the same selection.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from imgpipeline import ConfigError
from imgpipeline.vision.darknet import Head
from imgpipeline.vision.detection import Detection

# An engine's inference: a 1×3×S×S float32 blob in, the model's raw outputs (each YOLO head's) out.
Infer = Callable[[np.ndarray], Sequence[np.ndarray]]
# A layout's decoding: the raw outputs and the confidence threshold in, `candidates`' rows out.
Decode = Callable[[Sequence[np.ndarray], float], np.ndarray]


@dataclass(frozen=True)
class Identity:
    """What produced a detection: the model, the file the engine ran, the engine and its precision."""

    model: str  # e.g. yolov4-tiny-416
    model_sha256: str
    engine: str
    precision: str

    def as_record(self) -> dict:
        return asdict(self)


def blob(image: np.ndarray, size: int) -> np.ndarray:
    return cv2.dnn.blobFromImage(image, 1 / 255.0, (size, size), swapRB=True, crop=False)


def candidates(outputs: Sequence[np.ndarray], heads: Sequence[Head], size: int,
               confidence: float = 0.0) -> np.ndarray:
    """Rows of (cx, cy, w, h, objectness, class scores…), normalized, as OpenCV's region layer gives
    them, in its order.

    With `confidence` > 0, rows that cannot reach it are left out first: a class score is its
    sigmoid times the objectness, so a row whose objectness is at most the head's threshold has
    every class score zeroed. Most rows are such rows; nothing else changes.
    """
    rows = []
    for raw, head in zip(outputs, heads, strict=True):
        anchors = len(head.anchors)
        _, _, height, width = raw.shape
        t = raw.reshape(anchors, 5 + head.classes, height, width).transpose(2, 3, 0, 1)
        t = t.reshape(-1, 5 + head.classes)  # one row per (y, x, anchor)
        cell = np.arange(len(t))
        objectness = _sigmoid(t[:, 4])
        if confidence > 0:
            cell = cell[objectness > head.thresh]
            t, objectness = t[cell], objectness[cell]
        grid_x = ((cell // anchors) % width).astype(np.float32)
        grid_y = (cell // (anchors * width)).astype(np.float32)
        sizes = np.asarray(head.anchors, np.float32)[cell % anchors]
        shift = (head.scale_x_y - 1) / 2
        out = np.empty(t.shape, np.float32)
        out[:, 0] = (grid_x + _sigmoid(t[:, 0]) * head.scale_x_y - shift) / width
        out[:, 1] = (grid_y + _sigmoid(t[:, 1]) * head.scale_x_y - shift) / height
        out[:, 2] = np.exp(t[:, 2]) * sizes[:, 0] / size
        out[:, 3] = np.exp(t[:, 3]) * sizes[:, 1] / size
        out[:, 4] = objectness
        scores = _sigmoid(t[:, 5:]) * objectness[:, None]
        out[:, 5:] = np.where(scores > head.thresh, scores, 0)
        rows.append(out)
    return np.concatenate(rows)


def export_rows(outputs: Sequence[np.ndarray], layout: str, classes: int, size: int,
                confidence: float = 0.0) -> np.ndarray:
    """`candidates`' rows from an ONNX export's one output: `yolov8` is 1 × (4 + classes) × boxes of
    centre and size in input pixels then each class's score; `yolov5` is 1 × boxes × (5 + classes),
    an objectness before the class scores, which it multiplies. A row's objectness here is its best
    class score; rows that cannot reach `confidence` are left out."""
    extra = 4 if layout == "yolov8" else 5
    if len(outputs) != 1:
        raise ConfigError(f"a {layout} model has one output; this one has {len(outputs)}")
    raw = np.asarray(outputs[0], np.float32)
    width = extra + classes
    axis = 1 if layout == "yolov8" else 2
    if raw.ndim != 3 or raw.shape[0] != 1 or raw.shape[axis] != width:
        shape = "1 × (4 + classes) × boxes" if layout == "yolov8" else "1 × boxes × (5 + classes)"
        raise ConfigError(f"a {layout} model's output is {shape}, {width} wide for its {classes} class "
                          f"names; this one is {' × '.join(map(str, raw.shape))}: a model of another "
                          "layout, or a names file that does not match it")
    t = raw[0].T if layout == "yolov8" else raw[0]
    scores = t[:, extra:] * t[:, 4:5] if layout == "yolov5" else t[:, extra:]
    best = scores.max(axis=1) if len(t) else np.zeros(0, np.float32)
    keep = best >= np.float32(confidence) if confidence > 0 else np.ones(len(t), bool)
    out = np.empty((int(keep.sum()), 5 + classes), np.float32)
    out[:, :4] = t[keep, :4] / np.float32(size)
    out[:, 4] = best[keep]
    out[:, 5:] = scores[keep]
    return out


def decoder(layout: str, size: int, classes: int, heads: Sequence[Head] = ()) -> Decode:
    """The decoding of a layout: `darknet` (its cfg's heads), `yolov5` or `yolov8`."""
    if layout == "darknet":
        return lambda outputs, confidence: candidates(outputs, heads, size, confidence)
    if layout in ("yolov5", "yolov8"):
        return lambda outputs, confidence: export_rows(outputs, layout, classes, size, confidence)
    raise ConfigError(f"layout {layout!r} cannot be decoded; known are darknet, yolov5 and yolov8")


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-values))


def select(rows: np.ndarray, frame_w: int, frame_h: int, confidence: float, nms: float):
    """DetectionModel's post-processing: best class per row, integer boxes, per-class NMS."""
    scores = rows[:, 5:]
    class_ids = scores.argmax(axis=1)
    best = scores[np.arange(len(rows)), class_ids]
    keep = best >= np.float32(confidence)
    rows, class_ids, best = rows[keep], class_ids[keep], best[keep]
    # C++ float→int conversions truncate toward zero, as astype does.
    cx = (rows[:, 0] * np.float32(frame_w)).astype(np.int64)
    cy = (rows[:, 1] * np.float32(frame_h)).astype(np.int64)
    w = (rows[:, 2] * np.float32(frame_w)).astype(np.int64)
    h = (rows[:, 3] * np.float32(frame_h)).astype(np.int64)
    left = np.maximum(0, np.minimum(cx - w // 2, frame_w - 1))
    top = np.maximum(0, np.minimum(cy - h // 2, frame_h - 1))
    w = np.maximum(1, np.minimum(w, frame_w - left))
    h = np.maximum(1, np.minimum(h, frame_h - top))
    boxes = np.stack([left, top, w, h], axis=1)
    found = []
    for class_id in np.unique(class_ids):
        members = np.flatnonzero(class_ids == class_id)
        kept = cv2.dnn.NMSBoxes(boxes[members].tolist(), best[members].tolist(), confidence, nms)
        found.extend((int(class_id), float(best[members[i]]), tuple(int(v) for v in boxes[members[i]]))
                     for i in np.asarray(kept).reshape(-1))
    return found


class YoloDetector:
    """A YOLO model's detection around one engine's inference, with an optional class filter.

    `decode` is the layout's decoding (`decoder`); Darknet heads given instead decode as the cfg says.
    """

    def __init__(
        self,
        infer: Infer,
        identity: Identity,
        heads: Sequence[Head],
        names: Path,
        *,
        decode: Decode | None = None,
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
        self.infer = infer
        self.identity = identity
        self.decode = decode or decoder("darknet", input_size, len(self.class_names), list(heads))
        self.input_size = input_size
        self.confidence = confidence
        self.nms = nms

    @property
    def name(self) -> str:
        return self.identity.model

    def raw(self, image: np.ndarray) -> list[np.ndarray]:
        """The heads' raw tensors for one frame."""
        return [np.asarray(out) for out in self.infer(blob(image, self.input_size))]

    def detect(self, image: np.ndarray) -> list[Detection]:
        rows = self.decode(self.raw(image), self.confidence)
        height, width = image.shape[:2]
        found = [
            Detection(class_id=class_id, class_name=self.class_names[class_id],
                      confidence=round(confidence, 4), box=box)
            for class_id, confidence, box in select(rows, width, height, self.confidence, self.nms)
            if self.keep is None or class_id in self.keep
        ]
        found.sort(key=lambda d: (-d.confidence, d.class_id, d.box))
        return found


class DetectorPool:
    """Detectors shared by threads, one frame each at a time.

    Every engine releases the GIL while it infers, and on few cores several single-threaded
    inferences keep the CPU busier than one using every core.
    """

    def __init__(self, detectors: Sequence[YoloDetector]):
        if not detectors:
            raise ValueError("a detector pool needs at least one detector")
        self.size = len(detectors)
        self.name = detectors[0].name
        self.identity = detectors[0].identity
        self._idle: queue.SimpleQueue[YoloDetector] = queue.SimpleQueue()
        for detector in detectors:
            self._idle.put(detector)

    def detect(self, image: np.ndarray) -> list[Detection]:
        detector = self._idle.get()
        try:
            return detector.detect(image)
        finally:
            self._idle.put(detector)
