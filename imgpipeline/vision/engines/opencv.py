"""`opencv`: the Darknet files in OpenCV DNN, the reference every other engine is compared with."""

from __future__ import annotations

import numpy as np

from imgpipeline import ConfigError
from imgpipeline.vision.engines import register
from imgpipeline.vision.engines.base import Engine, Model, Network, Sessions
from imgpipeline.vision.models import ModelSpec


@register
class OpenCV(Engine):
    """A net per worker on the Darknet cfg and weights; threads are OpenCV's process-wide pool."""

    name = "opencv"
    runs = "weights"
    order = 0

    def model_file_for(self, spec: ModelSpec, precision: str) -> str:
        if spec.layout != "darknet":
            raise ConfigError(f"the opencv engine runs Darknet models; {spec.name} is an ONNX model in the "
                              f"{spec.layout} layout: use the openvino or onnxruntime engine")
        return super().model_file_for(spec, precision)

    def threads_for_one(self, cores: int) -> int:
        return -1  # OpenCV's own default

    def set_threads(self, threads: int) -> None:
        """OpenCV's process-wide thread count, which its nets use too (-1 restores its default)."""
        import cv2

        cv2.setNumThreads(threads)

    def preload(self, model: Model, count: int, precision: str) -> list:
        """The nets, loaded and run once on one thread: a forked child would wait forever on a thread
        pool that exists only in its parent. A forked run takes them instead of loading its own."""
        return self.detectors(model, count, 1, precision)

    def sessions(self, network: Network, count: int, threads: int, precision: str) -> Sessions:
        import cv2

        # OpenCV names a cfg layer's convolution conv_<index>; each head reads the one before it.
        names = [f"conv_{i - 1}" for i, layer in enumerate(network.sections[1:]) if layer["type"] == "yolo"]

        def one():
            net = cv2.dnn.readNetFromDarknet(str(network.cfg), str(network.path))
            net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

            def infer(blob: np.ndarray):
                net.setInput(blob)
                return net.forward(names)

            return infer

        return Sessions([one() for _ in range(count)], "f32").warmed(network.input_size)
