"""Inference engines for the YOLO model: each turns a blob into the heads' raw tensors.

`opencv` runs the Darknet files in OpenCV DNN (the reference); `onnxruntime` and `openvino` run
the ONNX form written by `imgpipeline models fetch`. An engine's sessions are made in the
process that uses them: thread pools started before a `fork` do not exist in the child.

`noop` runs nothing and finds nothing: it exists to measure orchestration (`imgpipeline bench
scale`), never for real detection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgpipeline import ConfigError
from imgpipeline.vision.darknet import INPUT

# `noop` last: the engines that detect come first in every listing.
ENGINES = ("opencv", "openvino", "onnxruntime", "noop")
# OpenVINO's inference precision: `default` is the CPU's own (bf16 where the CPU has it).
PRECISIONS = ("default", "f32", "bf16", "f16")


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


class NoopDetector:
    """The `noop` engine: no model, no inference, no detections, next to no cost.

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


def opencv(cfg: Path, weights: Path, head_layers: Sequence[str], input_size: int, workers: int) -> Sessions:
    import cv2

    def one():
        net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        names = list(head_layers)

        def infer(blob: np.ndarray):
            net.setInput(blob)
            return net.forward(names)

        return infer

    return Sessions([one() for _ in range(workers)], "f32").warmed(input_size)


def onnxruntime(onnx: Path, input_size: int, workers: int, threads: int) -> Sessions:
    """One session shared by the workers; each call computes on its caller's thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])

    def infer(blob: np.ndarray):
        return session.run(None, {INPUT: blob})

    return Sessions([infer] * workers, "f32").warmed(input_size)


def import_openvino():
    """OpenVINO, with its telemetry declined before it starts.

    Importing `openvino` starts the telemetry of its model converter, which counts as consent a
    home folder without a consent file (and writes a client id there). Declining in this
    process, as a consent file holding "0" would, keeps a site's data and home folder to itself.
    """
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # a release without the telemetry package has nothing to decline
        pass
    else:
        OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED
    import openvino

    return openvino


def openvino(onnx: Path, input_size: int, precision: str, workers: int) -> Sessions:
    """One compiled model, an infer request per worker: the throughput hint for a pool (workers 0
    takes the compiled model's optimal number of requests), the latency hint for one detector.
    """
    core = import_openvino().Core()
    model = core.read_model(str(onnx))
    model.reshape({INPUT: [1, 3, input_size, input_size]})
    config = {"PERFORMANCE_HINT": "LATENCY" if workers == 1 else "THROUGHPUT"}
    if workers > 1:
        config["PERFORMANCE_HINT_NUM_REQUESTS"] = workers
    if precision != "default":
        config["INFERENCE_PRECISION_HINT"] = precision
    try:
        compiled = core.compile_model(model, "CPU", config)
    except RuntimeError as error:
        raise ConfigError(f"OpenVINO cannot run the model at precision {precision!r} on this CPU: "
                          f"{str(error).splitlines()[0]}; use the precision `default` or `f32`") from None
    actual = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    count = workers or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def one():
        request = compiled.create_infer_request()

        def infer(blob: np.ndarray):
            request.infer({0: blob})
            return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]

        return infer

    return Sessions([one() for _ in range(max(1, count))], actual).warmed(input_size)
