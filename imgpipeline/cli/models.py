"""`imgpipeline models fetch | list | add`: the registry of models (`imgpipeline.vision.models`).

`fetch` gets a built-in model's files and checks them; `list` shows every model, its files' sha256
and whether they match; `add` checks an ONNX detector (its name, layout, input and class names) and
copies it with its manifest into `models/NAME/`, once a trial inference of the copy proves it runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from imgpipeline import ConfigError
from imgpipeline.environment import environment, models_dir
from imgpipeline.vision import models as registry
from imgpipeline.vision.model_files import file_sha256

# The names an added model's files take in its folder, whatever they were called.
MODEL_FILE, NAMES_FILE = "model.onnx", "names.txt"


def models(args) -> int:
    if args.action == "fetch":
        return fetch(args.name or registry.DEFAULT, args.source)
    if args.action == "list":
        return show()
    if not (args.name and args.onnx and args.names):
        raise ConfigError("`imgpipeline models add NAME --onnx FILE --names FILE` needs the three")
    add(args.name, Path(args.onnx), Path(args.names), layout=args.layout, input_size=args.input_size)
    return 0


def fetch(name: str, source: str | None = None, log=print) -> int:
    from imgpipeline.cli.fetch import fetch_model, fetch_yolov3

    if name == registry.DEFAULT:
        fetch_model(source=source, log=log)
    elif name == "yolov3-tiny":
        fetch_yolov3(log)
    else:
        registry.get(name)  # a ConfigError for a name no model has
        raise ConfigError(f"{name} was added, not fetched: `imgpipeline models list` shows its files")
    return 0


def states(spec: registry.ModelSpec) -> list[tuple[str, str, str]]:
    """Each file of the model: its name, its sha256 as published, and `ok`, `missing` or `corrupt`."""
    found = []
    for filename in dict.fromkeys([*spec.files.values(), spec.names]):
        path = spec.folder / filename
        expected = spec.sha256.get(filename, "")
        state = "missing" if not path.is_file() else "ok" if file_sha256(path) == expected else "corrupt"
        found.append((filename, expected, state))
    return found


def model_setting() -> str:
    """The variable that picks the live model."""
    from imgpipeline.resources import DetectorResource
    from imgpipeline.resources.settings import env_name

    return env_name(DetectorResource, "model")


def show(log=print) -> int:
    setting = model_setting()
    live = (environment().get(setting) or registry.DEFAULT).strip().lower()
    from imgpipeline.defs.laboratory.assets import loadable_models

    log(f"models in {models_dir()} (* the one {setting} runs)")
    _, left_out = loadable_models()
    for name in registry.known():
        try:
            spec = registry.get(name)
        except ConfigError as error:
            log(f"  {name}: unreadable: {error}")
            continue
        if name in left_out:
            log(f"  {name}: not loaded by the code location: {left_out[name]}")
            continue
        files = states(spec)
        ready = all(state == "ok" for _, _, state in files)
        what = "ready" if ready else spec.fetch or "its files are not as added"
        log(f"{'*' if name == live else ' '} {name}: {spec.layout}, input {spec.input_size}, "
            f"{spec.source}; {what}")
        for filename, digest, state in files:
            log(f"      {filename:22} {digest or '(no sha256)'}  {state}")
    return 0


def outputs_of(path: Path) -> tuple[list, list]:
    """The ONNX model's inputs' and outputs' shapes (an int per fixed dimension, None otherwise)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's own errors: the file is not an ONNX model
        raise ConfigError(f"{path} cannot be read as an ONNX model ({error})") from None
    if any(uses_external_data(tensor) for tensor in model.graph.initializer):
        raise ConfigError(f"{path} keeps its weights in other files; export it as one file "
                          "(onnx.save(model, path, save_as_external_data=False))")
    initializers = {i.name for i in model.graph.initializer}

    def shape(value) -> list:
        return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

    return ([shape(v) for v in model.graph.input if v.name not in initializers],
            [shape(v) for v in model.graph.output])


def layout_of(path: Path, classes: int, layout: str | None, input_size: int | None) -> tuple[str, int]:
    """The layout and input size of an ONNX detector, read from its shapes and checked against the
    settings given and its class names; a ConfigError that says what it found otherwise."""
    inputs, outputs = outputs_of(path)
    if len(inputs) != 1 or len(inputs[0]) != 4 or inputs[0][1] not in (3, None):
        raise ConfigError(f"{path}: a detector takes one image, 1 × 3 × size × size; this model takes "
                          f"{_shapes(inputs)}")
    height, width = inputs[0][2:]
    if height and width and height != width:
        raise ConfigError(f"{path}: its input is {height} × {width}; only square inputs are read")
    fixed = height or width
    if input_size and fixed and input_size != fixed:
        raise ConfigError(f"{path}: its input is fixed at {fixed}; --input-size {input_size} cannot run")
    size = input_size or fixed
    if not size:
        raise ConfigError(f"{path}: its input size is not fixed in the file; give it with --input-size")
    if size % 32 or not 32 <= size <= 2048:
        raise ConfigError(f"{path}: input size {size} must be a multiple of 32 from 32 to 2048")
    if len(outputs) != 1 or len(outputs[0]) != 3:
        raise ConfigError(f"{path}: a YOLOv5 or YOLOv8 export has one output of three dimensions; this one "
                          f"has {_shapes(outputs)}: other layouts cannot be read")
    _, rows, columns = outputs[0]
    fits = [name for name, axis, extra in (("yolov8", rows, 4), ("yolov5", columns, 5))
            if axis == extra + classes]
    if layout is None:
        if len(fits) != 1:
            raise ConfigError(f"{path}: its output is {_shapes(outputs)}; with {classes} class names a "
                              f"yolov8 export is 1 × {4 + classes} × boxes and a yolov5 one 1 × boxes × "
                              f"{5 + classes}: check the names file, or give --layout")
        layout = fits[0]
    elif layout not in fits and not (rows is None or columns is None):
        raise ConfigError(f"{path}: its output {_shapes(outputs)} is not a {layout} export's for {classes} "
                          "class names")
    return layout, size


def _shapes(shapes: list) -> str:
    return ", ".join(" × ".join("?" if d is None else str(d) for d in s) for s in shapes) or "nothing"


def add(name: str, onnx_file: Path, names_file: Path, *, layout: str | None = None,
        input_size: int | None = None, log=print) -> registry.ModelSpec:
    """Check an ONNX detector, copy it with its names and manifest into `models/NAME/` and try the copy:
    a model refused on the way leaves nothing behind."""
    from imgpipeline.vision.yaml_file import read_bounded

    folder = models_dir() / name
    _check_name(name, folder)
    for given in (onnx_file, names_file):
        if not given.is_file():
            raise ConfigError(f"{given}: no such file")
    try:
        names = registry.read_names_text(read_bounded(names_file, "names file").decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{names_file}: not UTF-8 text") from None
    if not names:
        raise ConfigError(f"{names_file}: no class names (one per line, in the model's output order)")
    if len(set(names)) != len(names):
        raise ConfigError(f"{names_file}: a class name is written twice")
    layout, size = layout_of(onnx_file, len(names), layout, input_size)
    models_dir().mkdir(parents=True, exist_ok=True)
    # A folder whose name starts with `.` is no model: it becomes one by its rename, once proven.
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir()))
    try:
        spec = _written(scratch, onnx_file, names, layout, size)
        _trial(spec, f"{onnx_file}: as copied into {folder}")
        scratch.rename(folder)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    log(f"added {name}: {layout}, input {size}, {len(names)} classes, {onnx_file.name} as {MODEL_FILE} "
        f"sha256 {spec.expected(MODEL_FILE)}; run it with {model_setting()}={name}")
    return registry.get(name)


def _check_name(name: str, folder: Path) -> None:
    """A ConfigError unless `name` can name a new model: well formed, not a built-in one's, no folder
    yet, and not another model's once Dagster makes op names of its assets' keys."""
    from imgpipeline.defs.tables import model_op_name, same_op_name

    if not registry.NAME.fullmatch(name) or name in registry.BUILTIN:
        raise ConfigError(f"{name!r} cannot name a new model: lowercase letters, digits, `.`, `_` and `-`, "
                          f"not {' or '.join(registry.BUILTIN)}")
    if folder.exists():
        raise ConfigError(f"{folder} exists: a model is added once (remove the folder to add it again)")
    if other := same_op_name(name, registry.known()):
        raise ConfigError(f"{name!r} cannot name a new model: Dagster names its assets' ops as those of the "
                          f"model {other} ({model_op_name(name)}), and the code location would not load; "
                          "choose a name that differs from it in more than `-`, `.` and `_`")


def _written(scratch: Path, onnx_file: Path, names: list[str], layout: str, size: int):
    """The model's files and manifest in the scratch folder, the manifest read back as the registry
    reads it."""
    import yaml

    shutil.copyfile(onnx_file, scratch / MODEL_FILE)
    (scratch / NAMES_FILE).write_text("\n".join(names) + "\n")
    sums = {f: file_sha256(scratch / f) for f in (MODEL_FILE, NAMES_FILE)}
    manifest = {"format": "onnx", "layout": layout, "file": MODEL_FILE, "names": NAMES_FILE,
                "input_size": size, "sha256": sums}
    (scratch / registry.MANIFEST).write_text("# added by `imgpipeline models add`\n"
                                             + yaml.safe_dump(manifest, sort_keys=False))
    for path in scratch.iterdir():
        os.chmod(path, 0o644)
    os.chmod(scratch, 0o755)
    return registry.read_manifest(scratch / registry.MANIFEST)


def _trial(spec: registry.ModelSpec, what: str) -> None:
    """One inference of the model as kept in its folder on a blank image in ONNX Runtime, decoded as its
    layout: a model that cannot run there, or whose output does not decode, is refused (`what` names it)."""
    import numpy as np
    import onnxruntime as ort

    from imgpipeline.vision.detector import export_rows

    size, path = spec.input_size, spec.verify(spec.file("onnx"))
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, size, size), np.float32)})
    except Exception as error:  # ONNX Runtime's own errors
        said = str(error).splitlines()[0]
        # Only the model file is copied: tensors it keeps in files beside it are not found there.
        hint = ("; save it as one file, its tensors inside (onnx.save(model, path, save_as_external_data="
                "False))") if "external" in said.lower() else ""
        raise ConfigError(f"{what}, ONNX Runtime cannot run it on a {size} × {size} image "
                          f"({said}){hint}") from None
    export_rows(outputs, spec.layout, len(spec.class_names()), size)
