"""`onnxruntime`: the model's ONNX form in ONNX Runtime, on the CPU at f32."""

from __future__ import annotations

import numpy as np

from imgpipeline.vision.engines import register
from imgpipeline.vision.engines.base import Engine, Network, Sessions


@register
class OnnxRuntime(Engine):
    """One session shared by the workers; each call computes on its caller's thread."""

    name = "onnxruntime"
    runs = "onnx"
    order = 2

    def import_runtime(self) -> None:
        import onnxruntime  # noqa: F401

    def sessions(self, network: Network, count: int, threads: int, precision: str) -> Sessions:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(network.path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def infer(blob: np.ndarray):
            return session.run(None, {name: blob})

        return Sessions([infer] * count, "f32").warmed(network.input_size)
