"""A small ONNX detector the tests build, in the YOLOv8 or YOLOv5 export layout: it finds squares of
pure red, green and blue, one grid cell each, so what it must find is known from the picture drawn.

Each cell of a `CELL`-pixel grid over the input scores a colour by how much its mean value of that
channel exceeds half the other two's; the box is the cell itself. The classes are `COLOURS`. In the
YOLOv5 layout every row's objectness is `OBJECTNESS`, which the decoding multiplies the scores by.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

COLOURS = ("red", "green", "blue")
CELL = 32
OBJECTNESS = 0.75  # of every row of the YOLOv5 layout: a found colour's confidence there (1 in YOLOv8's)
BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}


def colour_detector(path: Path, size: int = 320, layout: str = "yolov8", *, dynamic: bool = False) -> Path:
    """Write the detector as an ONNX file of `layout` for a `size` × `size` input (`dynamic`: the input's
    size left open in the file)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    grid = size // CELL
    cells = grid * grid
    gy, gx = np.divmod(np.arange(cells), grid)
    boxes = np.stack([(gx + 0.5) * CELL, (gy + 0.5) * CELL, np.full(cells, CELL), np.full(cells, CELL)])
    constants = {
        "boxes": boxes[None].astype(np.float32),  # 1 × 4 × cells
        "shape": np.array([1, 3, -1], np.int64),
        "axis1": np.array([1], np.int64),
        "three_halves": np.array(1.5, np.float32),
        "half": np.array(0.5, np.float32),
    }
    if layout == "yolov5":
        constants["objectness"] = np.full((1, 1, cells), OBJECTNESS, np.float32)  # every row's
    nodes = [
        helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[CELL, CELL],
                         strides=[CELL, CELL]),
        helper.make_node("Reshape", ["pooled", "shape"], ["means"]),
        helper.make_node("ReduceSum", ["means", "axis1"], ["total"], keepdims=1),
        helper.make_node("Mul", ["means", "three_halves"], ["own"]),
        helper.make_node("Mul", ["total", "half"], ["others"]),
        helper.make_node("Sub", ["own", "others"], ["raw"]),
        helper.make_node("Relu", ["raw"], ["scores"]),
    ]
    if layout == "yolov8":
        nodes.append(helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1))
        shape = [1, 4 + len(COLOURS), "boxes" if dynamic else cells]
    else:
        nodes += [helper.make_node("Concat", ["boxes", "objectness", "scores"], ["rows"], axis=1),
                  helper.make_node("Transpose", ["rows"], ["output0"], perm=[0, 2, 1])]
        shape = [1, "boxes" if dynamic else cells, 5 + len(COLOURS)]
    side = "size" if dynamic else size
    graph = helper.make_graph(
        nodes, "colours",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def with_constants_apart(model_file: Path, path: Path) -> Path:
    """Write the detector of `model_file` again with its tensors as Constant nodes, no initializer left in
    the graph, and the values of those of 1 KiB and more (its boxes) kept in `<path>.data` beside `path`
    (ONNX's external data; the small ones stay inside, where shape inference reads them)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(model_file))
    constants = [helper.make_node("Constant", [], [tensor.name], value=tensor)
                 for tensor in model.graph.initializer]
    nodes = [*constants, *model.graph.node]
    del model.graph.initializer[:], model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024, convert_attribute=True)
    return path


def names_file(path: Path) -> Path:
    path.write_text("\n".join(COLOURS) + "\n")
    return path


def squares(width: int, height: int, placed: dict[str, tuple[int, int, int, int]]) -> np.ndarray:
    """A grey frame (which the detector scores 0 for every colour, and is not dark) with a rectangle of
    each colour at (x, y, w, h) in frame pixels."""
    image = np.full((height, width, 3), 128, np.uint8)
    for colour, (x, y, w, h) in placed.items():
        image[y:y + h, x:x + w] = BGR[colour]
    return image


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()
