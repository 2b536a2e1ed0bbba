"""`recorded`: OpenVINO's detections, each frame's kept per machine and given again when the same frame
comes back, for tests and benchmarks of the orchestration that detect the same sample frames many times.

A frame is known by the sha256 of its decoded pixels; its detections are kept in a folder of the machine's
cache (`recorded/` in `environment.cache_dir()`) keyed by everything they depend on: the model file (its
sha256) and its Darknet cfg, the class names, the precision it ran at, the input size, thresholds and
class filter, the number of infer requests, the CPU (its model name and flags: INT8 and bf16 results
differ between CPUs), OpenVINO's, OpenCV's and NumPy's releases and the code that detects. A frame seen
for the first time, or whose kept file is not one this engine writes for that frame (damaged, hostile,
another frame's), is detected by OpenVINO and kept again; so a recording is what OpenVINO gave on this
machine. Each file is written whole under another name and renamed, so a process killed mid-write leaves
none half written, and two processes keeping the same frame at once keep the same detections; a file
that cannot be written is not kept, and the detection stands. The cache keeps the KEPT_KEYS keys used
last. Rows say engine `recorded` and the precision inference ran at.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np

from imgpipeline.vision.detection import Detection
from imgpipeline.vision.engines import register
from imgpipeline.vision.engines.base import Model
from imgpipeline.vision.engines.openvino import OpenVINO

# The keys (settings, model, CPU, code) whose recordings the cache keeps: those used last.
KEPT_KEYS = 8
# A kept frame's file is far smaller: a larger one is not one of ours.
MAX_FILE_BYTES = 1_000_000


class RecordedDetector:
    """An OpenVINO detector whose detections of each frame are kept in `folder` and read back."""

    def __init__(self, detector, folder: Path):
        from dataclasses import replace

        self.detector, self.folder = detector, folder
        self.identity = replace(detector.identity, engine="recorded")
        self.name = detector.name
        self.class_names = detector.class_names

    def detect(self, image: np.ndarray) -> list[Detection]:
        digest = hashlib.sha256(f"{image.shape}{image.dtype}".encode() + image.tobytes()).hexdigest()
        path = self.folder / digest[:2] / f"{digest}.json"
        kept = self._read(path, digest, image.shape[:2])
        if kept is not None:
            return kept
        found = self.detector.detect(image)
        part = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            part.write_text(json.dumps({"frame": digest, "detections": [
                [d.class_id, d.confidence, list(d.box)] for d in found]}))
            os.replace(part, path)
        except OSError:  # not kept (a full or read-only disk): detected again next time
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)
        return found

    def _read(self, path: Path, digest: str, shape: tuple[int, int]) -> list[Detection] | None:
        """The kept detections of a frame; None when none are kept or the file is not what this engine
        writes for this frame."""
        try:
            # Not a link followed nor a pipe waited on; a file past its size is cut and not read as ours.
            with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW | os.O_NONBLOCK)
                      ) as file:
                data = json.loads(file.read(MAX_FILE_BYTES + 1))
            if data["frame"] != digest:
                return None
            found = [self._detection(*row, shape) for row in data["detections"]]
        except (OSError, ValueError, TypeError, KeyError, IndexError):
            return None
        order = [(-d.confidence, d.class_id, d.box) for d in found]
        return found if order == sorted(order) else None

    def _detection(self, class_id, confidence, box, shape) -> Detection:
        """A kept row as the detector gives it; ValueError for one it cannot have given."""
        height, width = shape
        inner = self.detector
        if type(class_id) is not int or type(confidence) is not float or len(box) != 4 \
                or any(type(v) is not int for v in box):
            raise ValueError("not a row of ours")
        x, y, w, h = box
        if not (0 <= class_id < len(self.class_names) and inner.confidence <= confidence <= 1
                and (inner.keep is None or class_id in inner.keep) and round(confidence, 4) == confidence
                and 0 <= x < width and 0 <= y < height and 1 <= w <= width - x and 1 <= h <= height - y):
            raise ValueError("not a row the detector gives")
        return Detection(class_id=class_id, class_name=self.class_names[class_id], confidence=confidence,
                         box=(x, y, w, h))


def folder_for(model: Model, detectors: list) -> Path:
    """Where the recordings of these detectors are kept: keyed by all their detections depend on."""
    import cv2

    from imgpipeline.environment import cache_dir
    from imgpipeline.vision import darknet, detection, int8
    from imgpipeline.vision import detector as shared
    from imgpipeline.vision.engines import base
    from imgpipeline.vision.engines import openvino as engine
    from imgpipeline.vision.model_files import file_sha256

    code = [file_sha256(Path(module.__file__))
            for module in (shared, darknet, detection, base, engine, sys.modules[__name__])]
    one, spec = detectors[0], model.spec
    cfg = file_sha256(spec.folder / spec.file("cfg")) if spec.layout == "darknet" else None
    key = json.dumps({"identity": one.identity.as_record(), "layout": spec.layout, "cfg": cfg,
                      "names": one.class_names, "input_size": one.input_size, "confidence": one.confidence,
                      "nms": one.nms, "classes": sorted(one.keep) if one.keep is not None else None,
                      "requests": len(detectors), "cpu": int8.this_cpu(),
                      "releases": [engine.import_openvino().__version__, cv2.__version__, np.__version__],
                      "code": code}, sort_keys=True)
    return cache_dir() / "recorded" / hashlib.sha256(key.encode()).hexdigest()[:24]


@register
class Recorded(OpenVINO):
    """OpenVINO's model, files, precisions and `auto`; its detections kept per frame (above)."""

    name = "recorded"
    default_means = "runs as openvino does, each frame's detections kept and given again"
    order = 90
    listed = False  # for tests and benchmarks: not offered where a setting is refused
    figures_notice = ("frames seen before get the detections kept for them, without inference; detection's "
                      "figures here are not OpenVINO's")

    def detectors(self, model: Model, count: int, threads: int, precision: str) -> list:
        from imgpipeline.environment import keep_newest

        detectors = super().detectors(model, count, threads, precision)
        folder = folder_for(model, detectors)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.utime(folder)  # used last: kept
        except OSError:
            pass
        keep_newest(folder.parent, KEPT_KEYS, keeping=folder)
        return [RecordedDetector(detector, folder) for detector in detectors]
