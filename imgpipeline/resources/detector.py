"""The object detector as a resource: model files, input size and thresholds."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from imgpipeline.config import models_dir


class DetectorResource(dg.ConfigurableResource):
    """YOLOv4-tiny (Darknet) run by OpenCV DNN. Weights are checked by sha256 before use."""

    models_dir: str = Field(default_factory=lambda: str(models_dir()))
    input_size: int = 416
    confidence: float = 0.25
    nms: float = 0.45
    classes: list[str] | None = Field(
        default=None, description="Keep only these COCO class names (None keeps all)."
    )
    threads: int = Field(
        default=0,
        description="cv2.setNumThreads; 0: OpenCV's default for one detector, cores ÷ workers for a pool.",
    )
    workers: int = Field(
        default=0, description="Detectors working side by side in a run; 0: one per core, at most 4."
    )

    def load(self):
        """One detector; raises ConfigError for missing or corrupt weights."""
        return self._build(1, self.threads or -1)[0]

    def load_pool(self):
        """The detectors of a run (loaded once per run), for frames detected in parallel threads."""
        from imgpipeline.vision.detector import DetectorPool

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = self.workers or min(4, cores)
        threads = self.threads or (max(1, cores // workers) if workers > 1 else -1)
        return DetectorPool(self._build(workers, threads))

    def _build(self, count: int, threads: int):
        import cv2

        from imgpipeline.fetch import CFG, NAMES, verify_weights
        from imgpipeline.vision.detector import YoloDetector

        # Process-wide in OpenCV: set it every time (-1 restores OpenCV's default).
        cv2.setNumThreads(threads)
        folder = Path(self.models_dir)
        weights = verify_weights(folder)
        return [
            YoloDetector(
                folder / CFG,
                weights,
                folder / NAMES,
                input_size=self.input_size,
                confidence=self.confidence,
                nms=self.nms,
                classes=self.classes,
            )
            for _ in range(count)
        ]
