"""`recorded`: OpenVINO's detections, each frame's kept per machine and given again when the same frame
comes back, for tests and benchmarks of the orchestration that detect the same sample frames many times.

A frame is known by the sha256 of its decoded pixels; its detections are kept under a folder of the
cache (`recorded/` in `environment.cache_dir()`) keyed by everything they depend on: the model file (its
sha256), the precision it ran at, the input size, thresholds and class filter, the CPU (its model name
and flags: INT8 and bf16 results differ between CPUs), OpenVINO's release and the code that detects.
A frame seen for the first time, or whose kept detections cannot be read (a damaged file), is detected
by OpenVINO and kept; so a recording is what OpenVINO gives on this machine, made on it. Each file is
written whole under another name and renamed, so a process killed mid-write leaves none half written,
and two processes keeping the same frame at once keep the same detections. Rows say engine `recorded`
and the precision inference ran at, so they are never taken for rows detected as they came.
"""

from __future__ import annotations

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
        kept = self._read(path)
        if kept is not None:
            return kept
        found = self.detector.detect(image)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        part.write_text(json.dumps([[d.class_id, d.confidence, list(d.box)] for d in found]))
        os.replace(part, path)
        return found

    def _read(self, path: Path) -> list[Detection] | None:
        """The kept detections of a frame; None when none are kept or the file is not what this writes."""
        try:
            rows = json.loads(path.read_bytes())
            found = [Detection(class_id=int(class_id), class_name=self.class_names[int(class_id)],
                               confidence=float(confidence), box=(int(x), int(y), int(w), int(h)))
                     for class_id, confidence, (x, y, w, h) in rows]
        except (OSError, ValueError, TypeError, IndexError, OverflowError):
            return None
        if any(d.class_id < 0 or not 0 <= d.confidence <= 1 for d in found):
            return None
        return found


def folder_for(detector) -> Path:
    """Where a detector's recordings are kept: keyed by all its detections depend on."""
    from imgpipeline.environment import cache_dir
    from imgpipeline.vision import detector as shared
    from imgpipeline.vision import int8
    from imgpipeline.vision.engines import base
    from imgpipeline.vision.engines import openvino as engine
    from imgpipeline.vision.model_files import file_sha256

    code = [file_sha256(Path(module.__file__)) for module in (shared, base, engine, sys.modules[__name__])]
    key = json.dumps({"identity": detector.identity.as_record(), "input_size": detector.input_size,
                      "confidence": detector.confidence, "nms": detector.nms,
                      "classes": sorted(detector.keep) if detector.keep is not None else None,
                      "cpu": int8.this_cpu(), "openvino": engine.import_openvino().__version__,
                      "code": code}, sort_keys=True)
    return cache_dir() / "recorded" / hashlib.sha256(key.encode()).hexdigest()[:24]


@register
class Recorded(OpenVINO):
    """OpenVINO's model, files, precisions and `auto`; its detections kept per frame (above)."""

    name = "recorded"
    default_means = "runs as openvino does, each frame's detections kept and given again"
    order = 90

    def detectors(self, model: Model, count: int, threads: int, precision: str) -> list:
        detectors = super().detectors(model, count, threads, precision)
        folder = folder_for(detectors[0])
        return [RecordedDetector(detector, folder) for detector in detectors]
