"""The object detector as a resource: model files, input size and thresholds."""

from __future__ import annotations

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
    threads: int = Field(default=0, description="cv2.setNumThreads; 0 leaves OpenCV's default.")

    def load(self):
        """Load the model once (per run); raises ConfigError for missing or corrupt weights."""
        import cv2

        from imgpipeline.fetch import CFG, NAMES, verify_weights
        from imgpipeline.vision.detector import YoloDetector

        # Process-wide in OpenCV: set it every time (-1 restores OpenCV's default).
        cv2.setNumThreads(self.threads or -1)
        folder = Path(self.models_dir)
        weights = verify_weights(folder)
        return YoloDetector(
            folder / CFG,
            weights,
            folder / NAMES,
            input_size=self.input_size,
            confidence=self.confidence,
            nms=self.nms,
            classes=self.classes,
        )
