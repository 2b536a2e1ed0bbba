"""`noop`: no model, no inference, no detections; for benchmarks of the orchestration only."""

from __future__ import annotations

import numpy as np

from imgpipeline.vision.engines import register
from imgpipeline.vision.engines.base import Engine, Model


class NoopDetector:
    """The `noop` engine's detector: finds nothing at next to no cost.

    For benchmarks of the orchestration only (`imgpipeline bench scale`): frames are still read,
    fetched, checked and decoded by the run, and their records say engine `noop`, so they are never
    taken for a real detector's results.
    """

    def __init__(self):
        from imgpipeline.vision.detector import Identity  # OpenCV: imported by the runs only

        self.identity = Identity(model="noop", model_sha256="none", engine="noop", precision="none")
        self.name = self.identity.model

    def detect(self, image: np.ndarray) -> list:
        return []


@register
class Noop(Engine):
    """Runs no model file; the file it names is the class names the zones and alert rules are checked
    against."""

    name = "noop"
    runs = "names"
    default_means = "runs no model"
    order = 100

    def preload(self, model: Model, count: int, precision: str) -> None:
        """Nothing to import or hash."""
        return None

    def detectors(self, model: Model, count: int, threads: int, precision: str) -> list:
        """No model file, no inference: nothing to load."""
        return [NoopDetector() for _ in range(count)]
