"""The object detector as a resource: model files, input size and thresholds."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import dagster as dg
from pydantic import Field, field_validator, model_validator

from imgpipeline.paths import models_dir
from imgpipeline.resources.settings import FromEnv, one_of, setting

# Loaded ahead of any run by the fork server runs start from (imgpipeline.lib.launcher): OpenCV
# nets, whose settings a forked run matches to take them instead of loading its own, and model
# files' digests (by path, size and mtime), so a forked run does not hash them again.
_preloaded: dict[tuple, list] = {}
_digests: dict[tuple, str] = {}


class DetectorResource(FromEnv, dg.ConfigurableResource):
    """YOLOv4-tiny on an inference engine. Model files are checked by sha256 before use."""

    models_dir: str = Field(default_factory=lambda: str(models_dir()))
    input_size: int = 416
    confidence: float = 0.25
    nms: float = 0.45
    classes: list[str] | None = Field(
        default=None, description="Keep only these COCO class names (None keeps all)."
    )
    engine: str = setting(
        "IMGPIPELINE_DETECTOR_ENGINE", "openvino",
        "`openvino`, `onnxruntime` or `opencv` (the reference): what runs the model; "
        "every engine shares pre- and post-processing. `noop` runs no model and finds nothing: it exists "
        "to measure orchestration (`imgpipeline bench scale`), never for real detection")
    precision: str = setting(
        "IMGPIPELINE_DETECTOR_PRECISION", "default",
        "OpenVINO's inference precision: `default` (the CPU's own, bf16 where it has it: about twice "
        "as fast, a few boxes near the threshold differ), `f32` (the reference's detections), `bf16`, `f16`")
    threads: int = setting(
        "IMGPIPELINE_DETECTOR_THREADS", 0,
        "threads per detector (`opencv`, `onnxruntime`); 0: the engine's default for one detector, "
        "cores ÷ workers for a pool",
        ge=0)
    max_pixels: int = setting(
        "IMGPIPELINE_MAX_PIXELS", 40_000_000,
        "frames whose image header declares more pixels are refused before decoding (a pixel bomb)", ge=1)
    workers: int = setting(
        "IMGPIPELINE_DETECTOR_WORKERS", 0,
        "detections running side by side in a run; 0: OpenVINO's optimal number of requests, "
        "else one per core, at most 4",
        ge=0)

    @field_validator("engine", "precision", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("engine", "precision")
    @classmethod
    def _known(cls, value: str, info) -> str:
        from imgpipeline.vision.engines import ENGINES, PRECISIONS

        return one_of(cls, info.field_name, value, ENGINES if info.field_name == "engine" else PRECISIONS)

    @model_validator(mode="after")
    def _precision_needs_openvino(self):
        if self.precision != "default" and self.engine != "openvino":
            runs = "runs no model" if self.engine == "noop" else "runs at f32"
            raise ValueError(f"IMGPIPELINE_DETECTOR_PRECISION={self.precision} applies to the openvino "
                             f"engine only; {self.engine} {runs}: unset it or use the openvino engine")
        return self

    def load(self):
        """One detector; raises ConfigError for missing or corrupt model files."""
        return self._build(1, self.threads or (-1 if self.engine == "opencv" else _cores()))[0]

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
        """Get ready for runs forked from this process, starting no thread pool a child would lack.

        OpenCV nets are loaded and run once on one thread (a forked child would wait forever on
        a thread pool that exists only in its parent). A model OpenVINO compiled before a fork
        hangs its first inference in the child: here the engines are only imported and the model
        file hashed; each run compiles its own (0.1–0.4 s).
        """
        import cv2

        cv2.setNumThreads(1)
        if self.engine == "noop":
            return
        if self.engine != "opencv":
            from imgpipeline.vision.engines import import_openvino

            import_openvino() if self.engine == "openvino" else importlib.import_module(self.engine)
            self.model_file()
            return
        workers, _ = self._pool_shape()
        _preloaded[self._pool_key(workers)] = self._build(workers, 1)  # each net has run once

    def _pool_shape(self) -> tuple[int, int]:
        cores = _cores()
        if self.engine == "openvino":
            return self.workers, 0  # 0 workers: the compiled model's optimal number of requests
        workers = self.workers or min(4, cores)
        single = -1 if self.engine == "opencv" else cores
        return workers, self.threads or (max(1, cores // workers) if workers > 1 else single)

    def _pool_key(self, workers: int) -> tuple:
        from imgpipeline.vision.model_files import WEIGHTS

        weights = Path(self.models_dir) / WEIGHTS
        return (self.engine, self.precision, str(weights), _stat(weights), self.input_size, self.confidence,
                self.nms, tuple(self.classes or ()), workers)

    def model_file(self) -> tuple[Path, str]:
        """The file this engine runs, verified, and its sha256; for `noop`, which runs none, the class
        names the zones and alert rules are checked against."""
        from imgpipeline.vision.model_files import NAMES, ONNX, WEIGHTS, file_sha256, verify

        name = {"opencv": WEIGHTS, "noop": NAMES}.get(self.engine, ONNX)
        path = Path(self.models_dir) / name
        key = (str(path), _stat(path))
        digest = _digests.get(key) or (file_sha256(path) if path.is_file() else None)
        verify(name, Path(self.models_dir), digest=digest)
        _digests[key] = digest
        return path, digest

    def _build(self, count: int, threads: int):
        import cv2

        from imgpipeline.vision import engines
        from imgpipeline.vision.darknet import heads, parse_cfg
        from imgpipeline.vision.detector import Identity, YoloDetector
        from imgpipeline.vision.model_files import CFG, NAMES

        if self.engine == "noop":  # no model file, no inference: nothing to load
            return [engines.NoopDetector() for _ in range(count)]
        # Process-wide in OpenCV: set it every time (-1 restores OpenCV's default).
        cv2.setNumThreads(threads if self.engine == "opencv" else 1)
        folder = Path(self.models_dir)
        sections = parse_cfg(folder / CFG)
        path, digest = self.model_file()
        if self.engine == "opencv":
            # OpenCV names a cfg layer's convolution conv_<index>; each head reads the one before it.
            layers = [f"conv_{i - 1}" for i, layer in enumerate(sections[1:]) if layer["type"] == "yolo"]
            sessions = engines.opencv(folder / CFG, path, layers, self.input_size, count)
        elif self.engine == "onnxruntime":
            sessions = engines.onnxruntime(path, self.input_size, count, threads)
        else:
            sessions = engines.openvino(path, self.input_size, self.precision, count)
        identity = Identity(model=f"yolov4-tiny-{self.input_size}", model_sha256=digest,
                            engine=self.engine, precision=sessions.precision)
        return [
            YoloDetector(infer, identity, heads(sections), folder / NAMES, input_size=self.input_size,
                         confidence=self.confidence, nms=self.nms, classes=self.classes)
            for infer in sessions.infers
        ]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _stat(path: Path):
    stat = path.stat() if path.exists() else None
    return stat and (stat.st_size, stat.st_mtime_ns)
