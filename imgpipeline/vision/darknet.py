"""Darknet models: the cfg's layers, the YOLO heads' decoding parameters, and the ONNX form.

The converter writes the network up to the two YOLO heads' raw convolution outputs; decoding
(sigmoid, anchors, `scale_x_y`) and NMS stay in `imgpipeline.vision.detector`, shared by every
engine. Batch norm is folded into the convolutions with OpenCV's epsilon (1e-6), so the ONNX
model computes what OpenCV's Darknet importer computes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgpipeline import ConfigError

BN_EPSILON = 1e-6
OPSET = 13
INPUT = "images"


@dataclass(frozen=True)
class Head:
    """One YOLO output: which anchors it uses and how its raw tensor decodes."""

    anchors: tuple[tuple[float, float], ...]  # (width, height) in input pixels, this head's own
    classes: int
    scale_x_y: float
    thresh: float  # class probabilities at or below it read as 0, as OpenCV's region layer does


def parse_cfg(path: Path) -> list[dict[str, str]]:
    """The cfg's sections in order, each a dict with its `type` (`net`, `convolutional`, …)."""
    sections: list[dict[str, str]] = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if match := re.fullmatch(r"\[(\w+)\]", line):
            sections.append({"type": match.group(1)})
        elif "=" in line and sections:
            key, _, value = line.partition("=")
            sections[-1][key.strip()] = value.strip()
        else:
            raise ConfigError(f"{path}:{number}: cannot read {raw!r} as a Darknet cfg line")
    if not sections or sections[0]["type"] != "net":
        raise ConfigError(f"{path} does not start with a [net] section")
    return sections


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.replace(" ", "").split(",") if v]


def heads(sections: list[dict[str, str]]) -> list[Head]:
    """The YOLO heads in output order, read from the cfg (each head's mask picks its anchors)."""
    found = []
    for layer in sections[1:]:
        if layer["type"] != "yolo":
            continue
        flat = [float(v) for v in layer["anchors"].replace(" ", "").split(",") if v]
        pairs = list(zip(flat[0::2], flat[1::2], strict=True))
        found.append(Head(
            anchors=tuple(pairs[m] for m in _ints(layer["mask"])),
            classes=int(layer["classes"]),
            scale_x_y=float(layer.get("scale_x_y", 1.0)),
            thresh=float(layer.get("thresh", 0.2)),
        ))
    return found


class _Weights:
    """Darknet's weights file: a header, then each layer's float32 arrays in cfg order."""

    def __init__(self, path: Path):
        data = Path(path).read_bytes()
        if len(data) < 20:
            raise ConfigError(f"{path} is {len(data)} bytes: too short for Darknet weights")
        major, minor, _ = np.frombuffer(data, np.int32, 3)
        header = 20 if major * 10 + minor >= 2 else 16  # `seen` became 64-bit in 0.2
        if (len(data) - header) % 4:
            raise ConfigError(f"{path} ends in the middle of a value: truncated or not Darknet weights")
        self.values = np.frombuffer(data, np.float32, offset=header)
        self.position = 0
        self.path = path

    def take(self, count: int) -> np.ndarray:
        if self.position + count > self.values.size:
            raise ConfigError(f"{self.path} ends before the cfg's layers do: wrong weights for this cfg")
        chunk = self.values[self.position:self.position + count]
        self.position += count
        return chunk

    def done(self) -> None:
        if self.position != self.values.size:
            raise ConfigError(f"{self.path} has {self.values.size - self.position} values the cfg does "
                              "not use: wrong weights for this cfg")


def to_onnx(cfg: Path, weights: Path):
    """The Darknet model as an ONNX ModelProto whose outputs are the heads' raw tensors."""
    sections = parse_cfg(cfg)
    graph = _Graph(cfg, _Weights(weights), int(sections[0].get("channels", 3)))
    for index, layer in enumerate(sections[1:]):
        graph.add(index, layer)
    graph.weights.done()
    return graph.model()


class _Graph:
    """The ONNX graph of a Darknet network, built layer by layer in cfg order."""

    def __init__(self, cfg: Path, weights: _Weights, channels: int):
        self.cfg, self.weights = cfg, weights
        self.nodes: list = []
        self.initializers: list = []
        self.outputs: list[tuple[str, int]] = []  # each layer's tensor and channel count, by layer index
        self.heads: list[tuple[str, int]] = []
        self.tensor, self.channels = INPUT, channels  # the latest layer's output
        self.layers = {"convolutional": self.convolutional, "maxpool": self.maxpool, "route": self.route,
                       "upsample": self.upsample, "yolo": self.yolo}

    def add(self, index: int, layer: dict[str, str]) -> None:
        kind = layer["type"]
        if kind not in self.layers:
            raise ConfigError(f"{self.cfg}: layer type [{kind}] (layer {index}) is not supported")
        self.layers[kind](f"{kind}_{index}", index, layer)
        self.outputs.append((self.tensor, self.channels))

    def constant(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attributes) -> None:
        """A node whose output is `name`, which becomes the latest layer's output."""
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [name], **attributes))
        self.tensor = name

    def convolutional(self, name: str, index: int, layer: dict[str, str]) -> None:
        """Conv with batch norm folded in (OpenCV's epsilon), then its activation."""
        filters, size = int(layer["filters"]), int(layer["size"])
        stride = int(layer.get("stride", 1))
        pad = size // 2 if int(layer.get("pad", 0)) else int(layer.get("padding", 0))
        bias = self.weights.take(filters)
        if int(layer.get("batch_normalize", 0)):
            scale, mean, variance = (self.weights.take(filters) for _ in range(3))
            kernel = self.weights.take(filters * self.channels * size * size)
            factor = scale / np.sqrt(variance + BN_EPSILON)
            kernel = kernel.reshape(filters, self.channels, size, size) * factor[:, None, None, None]
            bias = bias - mean * factor
        else:
            kernel = self.weights.take(filters * self.channels * size * size)
            kernel = kernel.reshape(filters, self.channels, size, size)
        self.node("Conv", [self.tensor, self.constant(f"{name}.w", kernel.astype(np.float32)),
                           self.constant(f"{name}.b", bias.astype(np.float32))], name,
                  kernel_shape=[size, size], strides=[stride, stride], pads=[pad] * 4)
        self.channels = filters
        activation = layer.get("activation", "linear")
        if activation == "leaky":
            self.node("LeakyRelu", [name], f"{name}.act", alpha=0.1)
        elif activation != "linear":
            raise ConfigError(f"{self.cfg}: activation {activation!r} (layer {index}) is not supported")

    def maxpool(self, name: str, index: int, layer: dict[str, str]) -> None:
        size = int(layer["size"])
        stride = int(layer.get("stride", size))
        padding = int(layer.get("padding", size - 1))  # Darknet pads right and bottom
        begin = padding // 2
        self.node("MaxPool", [self.tensor], name, kernel_shape=[size, size], strides=[stride, stride],
                  pads=[begin, begin, padding - begin, padding - begin])

    def route(self, name: str, index: int, layer: dict[str, str]) -> None:
        """Earlier layers' outputs: one passed on, a group of its channels, or several concatenated."""
        sources = [self.outputs[i if i >= 0 else index + i] for i in _ints(layer["layers"])]
        groups, group = int(layer.get("groups", 1)), int(layer.get("group_id", 0))
        if groups > 1:
            (tensor, channels), = sources
            width = channels // groups
            self.node("Slice", [tensor, self.constant(f"{name}.start", np.array([width * group])),
                                self.constant(f"{name}.end", np.array([width * (group + 1)])),
                                self.constant(f"{name}.axis", np.array([1]))], name)
            self.channels = width
        elif len(sources) == 1:
            self.tensor, self.channels = sources[0]
        else:
            self.node("Concat", [t for t, _ in sources], name, axis=1)
            self.channels = sum(c for _, c in sources)

    def upsample(self, name: str, index: int, layer: dict[str, str]) -> None:
        stride = float(layer.get("stride", 2))
        scales = self.constant(f"{name}.scales", np.array([1, 1, stride, stride], np.float32))
        self.node("Resize", [self.tensor, "", scales], name, mode="nearest",
                  coordinate_transformation_mode="asymmetric", nearest_mode="floor")

    def yolo(self, name: str, index: int, layer: dict[str, str]) -> None:
        self.heads.append((self.tensor, self.channels))  # the raw tensor; the layer itself passes it through

    def model(self):
        """The checked ModelProto: the heads' raw tensors as outputs head0, head1, …"""
        import onnx
        from onnx import TensorProto, helper

        named = []
        for number, (raw, width) in enumerate(self.heads):
            self.nodes.append(helper.make_node("Identity", [raw], [f"head{number}"]))
            shape = [1, width, None, None]
            named.append(helper.make_tensor_value_info(f"head{number}", TensorProto.FLOAT, shape))
        images = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, "height", "width"])
        graph = helper.make_graph(self.nodes, "yolo", [images], named, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="imgpipeline")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model
