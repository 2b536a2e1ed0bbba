"""The object detector as a resource: model files, input size and thresholds."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from imgpipeline.paths import models_dir
from imgpipeline.resources.settings import FromEnv, setting

# Pools loaded ahead of any run by the fork server runs start from (imgpipeline.lib.launcher); a
# forked run whose detector settings match takes its pool instead of loading one.
_preloaded: dict[tuple, list] = {}


class DetectorResource(FromEnv, dg.ConfigurableResource):
    """YOLOv4-tiny (Darknet) run by OpenCV DNN. Weights are checked by sha256 before use."""

    models_dir: str = Field(default_factory=lambda: str(models_dir()))
    input_size: int = 416
    confidence: float = 0.25
    nms: float = 0.45
    classes: list[str] | None = Field(
        default=None, description="Keep only these COCO class names (None keeps all)."
    )
    threads: int = setting(
        "IMGPIPELINE_DETECTOR_THREADS", 0,
        "OpenCV threads per detector; 0: OpenCV's default for one detector, cores ÷ workers for a pool",
        ge=0)
    max_pixels: int = setting(
        "IMGPIPELINE_MAX_PIXELS", 40_000_000,
        "frames whose image header declares more pixels are refused before decoding (a pixel bomb)", ge=1)
    workers: int = setting(
        "IMGPIPELINE_DETECTOR_WORKERS", 0,
        "detectors working side by side in a run; 0: one per core, at most 4",
        ge=0)

    def load(self):
        """One detector; raises ConfigError for missing or corrupt weights."""
        return self._build(1, self.threads or -1)[0]

    def load_pool(self):
        """The detectors of a run (loaded once per run), for frames detected in parallel threads."""
        from imgpipeline.vision.detector import DetectorPool

        workers, threads = self._pool_shape()
        detectors = _preloaded.pop(self._pool_key(workers), None)
        if detectors:
            import cv2

            cv2.setNumThreads(threads)  # process-wide in OpenCV; preloading ran on one thread
        return DetectorPool(detectors or self._build(workers, threads))

    def preload(self) -> None:
        """Load this resource's pool and run each net once, for runs forked from this process.

        OpenCV stays on one thread here: a forked child would wait forever on a thread pool
        that exists only in its parent.
        """
        import cv2
        import numpy as np

        workers, _ = self._pool_shape()
        detectors = self._build(workers, 1)
        blank = np.zeros((self.input_size, self.input_size, 3), np.uint8)
        for detector in detectors:
            detector.detect(blank)  # a net's first pass allocates its layers: ~0.3 s
        _preloaded[self._pool_key(workers)] = detectors
        cv2.setNumThreads(1)

    def _pool_shape(self) -> tuple[int, int]:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = self.workers or min(4, cores)
        return workers, self.threads or (max(1, cores // workers) if workers > 1 else -1)

    def _pool_key(self, workers: int) -> tuple:
        from imgpipeline.vision.model_files import WEIGHTS

        weights = Path(self.models_dir) / WEIGHTS
        stat = weights.stat() if weights.exists() else None
        return (str(weights), stat and (stat.st_size, stat.st_mtime_ns), self.input_size,
                self.confidence, self.nms, tuple(self.classes or ()), workers)

    def _build(self, count: int, threads: int):
        import cv2

        from imgpipeline.vision.detector import YoloDetector
        from imgpipeline.vision.model_files import CFG, NAMES, verify_weights

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
