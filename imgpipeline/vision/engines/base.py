"""What every engine is: the `Engine` interface, the model it is given, and the sessions it makes.

An engine runs a model's inference and nothing else: pre-processing, decoding, NMS and the identity
on every row are shared (`imgpipeline.vision.detector`). An engine says which of a model's files it
runs, which precisions it accepts (`default` always), its thread defaults, what
it does before a fork, and how it makes its inference sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from imgpipeline.vision.models import ModelSpec


@dataclass
class Sessions:
    """Inference callables ready for threads (one per worker) and the precision they run at."""

    infers: list
    precision: str

    def warmed(self, input_size: int) -> Sessions:
        """Each callable run once, one after the other, before threads share them.

        A first inference allocates buffers (OpenCV: ~0.3 s), and OpenVINO's Python binding
        initializes function-local statics that take the GIL: two threads making their first
        call at once can deadlock there (one holds the GIL waiting for the static's guard, the
        other holds the guard waiting for the GIL), which was seen in a forked run.
        """
        blank = np.zeros((1, 3, input_size, input_size), np.float32)
        for infer in dict.fromkeys(self.infers):
            infer(blank)
        return self


@dataclass(frozen=True)
class Model:
    """The model as the detector's settings give it: the registry's entry (`imgpipeline.vision.models`),
    input size and the thresholds and class filter every engine shares. `verified` turns a file name of
    the model's folder into its path and sha256 once the file matches its published sha256 (raising
    ConfigError otherwise)."""

    spec: ModelSpec
    input_size: int
    confidence: float
    nms: float
    classes: list[str] | None
    verified: Callable[[str], tuple[Path, str]]

    @property
    def folder(self) -> Path:
        return self.spec.folder


@dataclass(frozen=True)
class Network:
    """What an engine's sessions are made from: the Darknet cfg and its sections (none for an ONNX
    export), the verified file the engine runs and the input size."""

    cfg: Path | None
    sections: list[dict[str, str]]
    path: Path
    input_size: int


class Engine:
    """An inference engine: one module of `imgpipeline.vision.engines` defines one and registers it.

    Engines hold no state: the registry keeps one instance of each, and the detector resource asks
    it for everything that differs between engines.
    """

    name: ClassVar[str]  # the value of the detector's engine setting that selects it
    # Which of a model's files it runs, checked by sha256: `weights` (Darknet), `onnx` or `names`.
    runs: ClassVar[str]
    # The precisions it accepts, `default` first (and `auto`, which every engine accepts and resolves
    # with `auto`); `default_means` says what `default` is for it, as a message puts it after the
    # engine's name.
    precisions: ClassVar[tuple[str, ...]] = ("default",)
    default_means: ClassVar[str] = "runs at f32"
    # Where it stands in listings (lowest first): the reference first, engines that detect nothing last.
    order: ClassVar[int] = 50
    # Offered where a precision setting is refused for another engine (`recorded`, the tests', is not).
    listed: ClassVar[bool] = True
    # What a benchmark says when it runs on this engine, whose detection figures are not inference's.
    figures_notice: ClassVar[str] = ""

    def model_file_for(self, spec: ModelSpec, precision: str) -> str:
        """The file of the model's folder it runs at `precision`."""
        return spec.names if self.runs == "names" else spec.file(self.runs)

    def auto(self, model: Model) -> tuple[str, str]:
        """The precision `auto` runs, the fastest of those proven on this CPU, and why."""
        return "default", "the only one this engine has"

    def threads_for_one(self, cores: int) -> int:
        """Threads of a detector loaded alone when the setting leaves them to the engine (0)."""
        return cores

    def pool_shape(self, workers: int, threads: int, cores: int) -> tuple[int, int]:
        """A run's detectors and threads each, from the settings (0: the engine's default): one
        detector per core, at most 4, the cores shared between them."""
        workers = workers or min(4, cores)
        return workers, threads or (max(1, cores // workers) if workers > 1 else self.threads_for_one(cores))

    def set_threads(self, threads: int) -> None:
        """OpenCV's process-wide thread count while this engine's detectors run: 1, as each worker
        pre-processes its own frame on its own thread."""
        import cv2

        cv2.setNumThreads(1)

    def import_runtime(self) -> None:
        """Import what the engine runs on, as the fork server does once for every run."""

    def preload(self, model: Model, count: int, precision: str) -> list | None:
        """Get ready for runs forked from this process, starting no thread pool a forked child would
        lack; detectors returned here (`count`, built on one thread) serve the forked runs.

        By default the runtime is only imported and the model file hashed: each run makes its own
        sessions.
        """
        self.import_runtime()
        model.verified(self.model_file_for(model.spec, precision))
        return None

    def sessions(self, network: Network, count: int, threads: int, precision: str) -> Sessions:
        """`count` inference callables (`threads` each where the engine takes a thread count) at
        `precision`, one of the engine's `precisions`."""
        raise NotImplementedError(f"the {self.name} engine makes no sessions")

    def detectors(self, model: Model, count: int, threads: int, precision: str) -> list:
        """`count` detectors around this engine's sessions, sharing pre-processing, decoding and NMS;
        their identity names the model, the file run (by sha256), the engine and its precision."""
        from imgpipeline.vision.darknet import heads, parse_cfg
        from imgpipeline.vision.detector import Identity, YoloDetector, decoder
        from imgpipeline.vision.models import read_names

        self.set_threads(threads)  # process-wide in OpenCV: set every time
        spec = model.spec
        cfg = spec.folder / spec.file("cfg") if spec.layout == "darknet" else None
        sections = parse_cfg(cfg) if cfg else []
        path, digest = model.verified(self.model_file_for(spec, precision))
        names, _ = model.verified(spec.names)
        network = Network(cfg, sections, path, model.input_size)
        sessions = self.sessions(network, count, threads, precision)
        identity = Identity(model=f"{spec.name}-{model.input_size}", model_sha256=digest,
                            engine=self.name, precision=sessions.precision)
        classes = len(read_names(names))
        decode = decoder(spec.layout, model.input_size, classes, heads(sections) if cfg else ())
        if spec.layout != "darknet":  # an export's output read once at load: a wrong layout fails here
            blank = np.zeros((1, 3, model.input_size, model.input_size), np.float32)
            decode([np.asarray(out) for out in sessions.infers[0](blank)], 0.0)
        return [
            YoloDetector(infer, identity, (), names, decode=decode, input_size=model.input_size,
                         confidence=model.confidence, nms=model.nms, classes=model.classes)
            for infer in sessions.infers
        ]
