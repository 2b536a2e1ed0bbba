"""The object detector as a resource: model files, input size and thresholds."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field, field_validator, model_validator

from imgpipeline.environment import cores, models_dir
from imgpipeline.resources.settings import FromEnv, one_of, setting

# Loaded ahead of any run by the fork server runs start from (imgpipeline.lib.fork_server): detectors
# an engine builds before a fork (OpenCV's nets), whose settings a forked run matches to take them
# instead of loading its own, and model files' digests (by path, size and mtime), so a forked run
# does not hash them again.
_preloaded: dict[tuple, list] = {}
_digests: dict[tuple, str] = {}


class DetectorResource(FromEnv, dg.ConfigurableResource):
    """A model of the registry (`imgpipeline.vision.models`) on an inference engine. Model files are
    checked by sha256 before use."""

    models_dir: str = Field(default_factory=lambda: str(models_dir()))
    model: str = setting(
        "IMGPIPELINE_MODEL", "yolov4-tiny",
        "the model that detects: `yolov4-tiny`, `yolov3-tiny` (`imgpipeline models fetch yolov3-tiny` gets "
        "it) or an ONNX model added with `imgpipeline models add`; `imgpipeline models list` shows them. "
        "Every row names its model, so rows of two models never mix")
    input_size: int | None = Field(default=None, description="The model's input size (None: its own).")
    confidence: float = 0.25
    nms: float = 0.45
    classes: list[str] | None = Field(
        default=None, description="Keep only these COCO class names (None keeps all)."
    )
    engine: str = setting(
        "IMGPIPELINE_DETECTOR_ENGINE", "openvino",
        "`openvino`, `onnxruntime` or `opencv` (the reference): what runs the model; "
        "every engine shares pre- and post-processing. `noop` runs no model and finds nothing: it exists "
        "to measure orchestration (`imgpipeline bench scale`), never for real detection. `recorded` runs as "
        "`openvino` and keeps each frame's detections per machine, giving them again when the same frame "
        "comes back (the tests' sample frames; rows say `recorded`)")
    precision: str = setting(
        "IMGPIPELINE_DETECTOR_PRECISION", "auto",
        "OpenVINO's inference precision: `auto` (the fastest proven on this CPU: `int8` where `imgpipeline "
        "models fetch` made the INT8 model, its agreement with f32 passed and its probe ran it faster, else "
        "`default`), `default` (the CPU's own, bf16 where it has it: about twice as fast as f32, a few boxes "
        "near the threshold differ), `int8`, `f32` (the reference's detections), `bf16`, `f16`")
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

    @field_validator("engine", "precision", "model", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("engine")
    @classmethod
    def _registered(cls, value: str) -> str:
        from imgpipeline.vision import engines

        return one_of(cls, "engine", value, engines.names())

    @field_validator("precision")
    @classmethod
    def _accepted_by_some_engine(cls, value: str) -> str:
        from imgpipeline.vision import engines

        return one_of(cls, "precision", value, engines.precisions())

    @model_validator(mode="after")
    def _known_model(self):
        from imgpipeline import ConfigError

        try:
            self.spec()
        except ConfigError as error:
            raise ValueError(f"{self.env_setting('model')}: {error}") from None
        return self

    @model_validator(mode="after")
    def _precision_the_engine_accepts(self):
        from imgpipeline.vision import engines

        if self.precision != "auto" and self.precision not in self._engine.precisions:
            named = f"{' or '.join(engines.taking(self.precision))} engine"
            raise ValueError(f"{self.env_setting('precision')} applies to the {named} only; {self.engine} "
                             f"{self._engine.default_means}: unset it or use the {named}")
        return self

    @property
    def _engine(self):
        """The registered engine the setting names."""
        from imgpipeline.vision import engines

        return engines.get(self.engine)

    def load(self):
        """One detector; raises ConfigError for missing or corrupt model files."""
        return self._build(1, self.threads or self._engine.threads_for_one(cores()))[0]

    def load_pool(self):
        """The detectors of a run (loaded once per run), for frames detected in parallel threads."""
        from imgpipeline.vision.detector import DetectorPool

        workers, threads = self._pool_shape()
        detectors = _preloaded.pop(self._pool_key(workers), None)
        if detectors:
            self._engine.set_threads(threads)  # process-wide in OpenCV; preloading ran on one thread
        return DetectorPool(detectors or self._build(workers, threads))

    def preload(self) -> None:
        """Get ready for runs forked from this process, starting no thread pool a child would lack.

        What each engine does is its own (`Engine.preload`): OpenCV nets are loaded and run once on
        one thread, and a forked run whose settings match takes them instead of loading its own; a
        model OpenVINO compiled before a fork would hang its first inference in the child, so
        OpenVINO (and ONNX Runtime) are only imported and the model file hashed, and each run
        compiles its own (0.1–0.4 s).
        """
        import cv2

        cv2.setNumThreads(1)
        workers, _ = self._pool_shape()
        detectors = self._engine.preload(self._model(), workers, self.resolved_precision())
        if detectors:
            _preloaded[self._pool_key(workers)] = detectors  # each has run once

    def _pool_shape(self) -> tuple[int, int]:
        return self._engine.pool_shape(self.workers, self.threads, cores())

    def _pool_key(self, workers: int) -> tuple:
        spec, precision = self.spec(), self.resolved_precision()
        path = spec.folder / self._engine.model_file_for(spec, precision)
        return (self.engine, precision, self.model, str(path), _stat(path), self._input_size(spec),
                self.confidence, self.nms, tuple(self.classes or ()), workers)

    def spec(self):
        """The registry's entry for the model setting; a ConfigError when no model has that name."""
        from imgpipeline.vision import models

        return models.get(self.model, Path(self.models_dir))

    def _input_size(self, spec) -> int:
        return self.input_size or spec.input_size

    def resolved_precision(self) -> str:
        """The precision setting, with `auto` turned into the one it runs on this CPU."""
        return self._engine.auto(self._model())[0] if self.precision == "auto" else self.precision

    def why_precision(self) -> str:
        """Why the precision setting runs what it runs, as `check` says it."""
        if self.precision != "auto":
            return f"set by {self.env_setting('precision')}"
        return f"auto: {self._engine.auto(self._model())[1]}"

    def model_file(self) -> tuple[Path, str]:
        """The file this engine runs at its precision, verified, and its sha256; for `noop`, which runs
        none, the class names the zones and alert rules are checked against."""
        return self._verified(self._engine.model_file_for(self.spec(), self.resolved_precision()))

    def _verified(self, name: str) -> tuple[Path, str]:
        """A file of the model's folder once its sha256 matches (the one the registry publishes; for the
        INT8 model, its record of this CPU), and the sha256 (hashed once per path, size and mtime)."""
        from imgpipeline.vision import int8
        from imgpipeline.vision.model_files import INT8_XML, file_sha256

        spec = self.spec()
        if name == INT8_XML:  # made here: its record proves it; its sha256 covers the .xml and .bin
            return int8.verify(spec.folder)
        path = spec.folder / name
        key = (str(path), _stat(path))
        digest = _digests.get(key) or (file_sha256(path) if path.is_file() else None)
        spec.verify(name, digest)
        _digests[key] = digest
        return path, digest

    def _model(self):
        from imgpipeline.vision.engines import Model

        spec = self.spec()
        return Model(spec, self._input_size(spec), self.confidence, self.nms, self.classes, self._verified)

    def _build(self, count: int, threads: int):
        return self._engine.detectors(self._model(), count, threads, self.resolved_precision())


def _stat(path: Path):
    stat = path.stat() if path.exists() else None
    return stat and (stat.st_size, stat.st_mtime_ns)
