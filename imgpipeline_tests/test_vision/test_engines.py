"""Every engine against the reference (OpenCV DNN on the Darknet files) on the same frames."""

import multiprocessing
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from imgpipeline.cli.samples import sample
from imgpipeline.resources import DetectorResource
from imgpipeline.vision.agreement import compare
from imgpipeline.vision.quality import decode_image

F32_ENGINES = [("onnxruntime", "default"), ("openvino", "f32")]


def video(limit: int | None = None) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(sample("bikes.mp4")))
    frames = []
    while limit is None or len(frames) < limit:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def frames():
    found = video()
    assert len(found) >= 200
    return found


@pytest.fixture(scope="module")
def detected(frames):
    """The video's detections by engine and the precision it ran at: one engine at one precision gives
    the same detections every time, so a setting that resolves to a precision already run (`default` on
    a CPU without bf16 is f32) is not run again."""
    found: dict[tuple[str, str], tuple] = {}

    def detect(resource: DetectorResource):
        pool = resource.load_pool()
        key = (resource.engine, pool.identity.precision)
        if key not in found:
            with ThreadPoolExecutor(max_workers=pool.size) as threads:
                found[key] = pool, list(threads.map(pool.detect, frames))
        return found[key]

    return detect


@pytest.fixture(scope="module")
def reference(detected):
    return detected(DetectorResource(engine="opencv"))[1]


def photos():
    return [decode_image(sample(name).read_bytes()) for name in ("bus.jpg", "zidane.jpg")]


@pytest.mark.parametrize(("engine", "precision"), F32_ENGINES)
def test_onnx_heads_equal_opencvs_raw_heads(engine, precision):
    opencv = DetectorResource(engine="opencv").load()
    other = DetectorResource(engine=engine, precision=precision).load()
    for image in photos() + video(8)[::4]:
        expected, got = opencv.raw(image), other.raw(image)
        assert [a.shape for a in got] == [a.shape for a in expected] == [(1, 255, 13, 13), (1, 255, 26, 26)]
        for a, b in zip(expected, got, strict=True):
            assert np.abs(a - b).max() < 1e-3


def test_shared_decoding_gives_exactly_what_opencvs_detection_model_gives(frames, reference):
    from imgpipeline.environment import models_dir
    from imgpipeline.vision.model_files import CFG, WEIGHTS

    net = cv2.dnn.readNetFromDarknet(str(models_dir() / CFG), str(models_dir() / WEIGHTS))
    model = cv2.dnn.DetectionModel(net)
    model.setInputParams(scale=1 / 255.0, size=(416, 416), swapRB=True, crop=False)
    for frame, ours in zip(frames[::5] + photos(), reference[::5] + [None, None], strict=True):
        ours = ours or DetectorResource(engine="opencv").load().detect(frame)
        ids, scores, boxes = model.detect(frame, confThreshold=0.25, nmsThreshold=0.45)
        theirs = sorted((int(c), round(float(s), 4), tuple(int(v) for v in b)) for c, s, b in zip(
            np.asarray(ids).reshape(-1), np.asarray(scores).reshape(-1), np.asarray(boxes).reshape(-1, 4),
            strict=True))
        assert sorted((d.class_id, d.confidence, d.box) for d in ours) == theirs


@pytest.mark.parametrize(("engine", "precision"), F32_ENGINES)
def test_f32_engines_detect_what_the_reference_detects(detected, reference, engine, precision):
    pool, found = detected(DetectorResource(engine=engine, precision=precision))
    assert pool.identity.precision == "f32"
    result = compare(reference, found)
    assert result.reference > 300
    # Same classes and integer boxes; confidences may differ in the 4th decimal.
    assert result.identical == result.reference == result.other, result.summary()


def test_the_cpus_own_precision_agrees_with_the_reference(detected, reference):
    pool, found = detected(DetectorResource(engine="openvino", precision="default"))
    result = compare(reference, found)
    summary = result.summary()
    if pool.identity.precision == "f32":  # a CPU without bf16 or f16 runs the reference's precision
        assert result.identical == result.reference == result.other, summary
        return
    assert result.matched_share >= 0.95, summary
    assert max(result.confidence_diffs) <= 0.1, summary
    # What differs is near the 0.25 threshold, on either side.
    assert all(c < 0.4 for c in result.unmatched_reference + result.unmatched_other), summary


def _detect_in_child(resource, image, answers):
    answers.put([(d.class_id, d.confidence, d.box) for d in resource.load_pool().detect(image)])


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime", "opencv"])
def test_a_process_forked_after_preload_detects(engine):
    """The fork server preloads, then forks runs: no engine may leave a pool the child waits on."""
    image = photos()[0]
    resource = DetectorResource(engine=engine)
    resource.preload()
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    child = context.Process(target=_detect_in_child, args=(resource, image, answers))
    child.start()
    child.join(timeout=60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung, f"a child forked after preloading {engine} did not finish detecting in 60 s"
    assert child.exitcode == 0
    expected = [(d.class_id, d.confidence, d.box) for d in resource.load_pool().detect(image)]
    assert answers.get(timeout=5) == expected


def test_nets_preloaded_for_one_engine_never_serve_another():
    image = photos()[0]
    DetectorResource(engine="opencv", workers=2).preload()
    pool = DetectorResource(engine="openvino", precision="f32", workers=2).load_pool()
    assert pool.identity.engine == "openvino"
    assert [d.box for d in pool.detect(image)] == [
        d.box for d in DetectorResource(engine="openvino", precision="f32").load().detect(image)]
    # The preloaded nets still serve the run of their own engine.
    assert DetectorResource(engine="opencv", workers=2).load_pool().identity.engine == "opencv"


TELEMETRY_PROBE = """
import socket, sys
import numpy as np
attempts = []
def refuse(self, address, *args):
    attempts.append(address)
    raise OSError("no network")
socket.socket.connect = socket.socket.connect_ex = refuse
from imgpipeline.resources import DetectorResource
detector = DetectorResource(engine="openvino").load()
detector.detect(np.zeros((64, 64, 3), np.uint8))
from openvino_telemetry import Telemetry
print(detector.identity.engine, attempts, Telemetry().consent)
"""


def test_openvino_runs_without_telemetry_or_any_connection(tmp_path):
    import os

    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run([sys.executable, "-c", TELEMETRY_PROBE], capture_output=True, text=True,
                            timeout=120, env={**{k: v for k, v in os.environ.items()
                                                 if k not in ("CI", "TF_BUILD", "JENKINS_URL")},
                                              "HOME": str(home)})
    assert result.returncode == 0, result.stderr
    # No socket was opened, telemetry has no consent (and not because the environment looks like
    # CI, which it also declines), and nothing was written in the home folder.
    assert result.stdout.split() == ["openvino", "[]", "False"]
    assert list(home.iterdir()) == []


def test_bad_engine_settings_say_what_to_use(monkeypatch):
    from imgpipeline import ConfigError

    monkeypatch.setenv("IMGPIPELINE_DETECTOR_ENGINE", "tensorrt")
    with pytest.raises(ConfigError, match="IMGPIPELINE_DETECTOR_ENGINE='tensorrt' is not known; use one of "
                                          "opencv, openvino, onnxruntime"):
        DetectorResource.from_env()
    monkeypatch.setenv("IMGPIPELINE_DETECTOR_ENGINE", "onnxruntime")
    monkeypatch.setenv("IMGPIPELINE_DETECTOR_PRECISION", "bf16")
    with pytest.raises(ConfigError, match="applies to the openvino engine only"):
        DetectorResource.from_env()
    monkeypatch.setenv("IMGPIPELINE_DETECTOR_ENGINE", "OpenVINO")
    monkeypatch.setenv("IMGPIPELINE_DETECTOR_PRECISION", "F32")
    resource = DetectorResource.from_env()
    assert (resource.engine, resource.precision) == ("openvino", "f32")


def test_the_converter_refuses_hostile_model_files(tmp_path):
    """Files in the models folder are input too: each defect is named, and nothing is written."""
    from imgpipeline import ConfigError
    from imgpipeline.environment import models_dir
    from imgpipeline.vision.darknet import to_onnx
    from imgpipeline.vision.model_files import CFG, WEIGHTS

    cfg_text = (models_dir() / CFG).read_text()
    weights = (models_dir() / WEIGHTS).read_bytes()

    def convert(cfg: str, data: bytes):
        (tmp_path / "m.cfg").write_text(cfg)
        (tmp_path / "m.weights").write_bytes(data)
        return to_onnx(tmp_path / "m.cfg", tmp_path / "m.weights")

    with pytest.raises(ConfigError, match="ends before the cfg's layers do"):
        convert(cfg_text, weights[: 20 + 4 * 100_000])
    with pytest.raises(ConfigError, match="ends in the middle of a value"):
        convert(cfg_text, weights[:-3])
    with pytest.raises(ConfigError, match="too short for Darknet weights"):
        convert(cfg_text, b"\x01\x02")
    with pytest.raises(ConfigError, match="values the cfg does not use"):
        convert(cfg_text, weights + b"\0" * 64)
    with pytest.raises(ConfigError, match=r"layer type \[shortcut\]"):
        convert(cfg_text.replace("[maxpool]", "[shortcut]", 1), weights)
    with pytest.raises(ConfigError, match="activation 'mish'"):
        convert(cfg_text.replace("activation=leaky", "activation=mish", 1), weights)
    with pytest.raises(ConfigError, match="cannot read"):
        convert(cfg_text.replace("[net]", "[net]\nthis is not a cfg line", 1), weights)
    with pytest.raises(ConfigError, match=r"does not start with a \[net\]"):
        convert(cfg_text[cfg_text.index("[convolutional]"):], weights)


def test_the_noop_engine_needs_no_model_and_finds_nothing(tmp_path):
    from imgpipeline.vision.engines import names

    empty = DetectorResource(engine="noop", models_dir=str(tmp_path))  # no model file at all
    for image in photos():
        assert empty.load().detect(image) == []
        assert empty.load_pool().detect(image) == []
    # Its records say what made them: never taken for a real detector's.
    assert empty.load_pool().identity.as_record() == {
        "model": "noop", "model_sha256": "none", "engine": "noop", "precision": "none"}
    assert "noop" in names() and names()[0] == "opencv"


def test_an_unknown_engine_is_refused_with_every_engine_named():
    import pydantic

    from imgpipeline.resources.settings import env_name
    from imgpipeline.vision.engines import names

    with pytest.raises(pydantic.ValidationError) as refused:
        DetectorResource(engine="yolo-magic")
    message = str(refused.value)
    assert f"{env_name(DetectorResource, 'engine')}='yolo-magic' is not known" in message
    assert f"use one of {', '.join(names())}" in message
    assert all(engine in message for engine in ("opencv", "openvino", "onnxruntime", "noop"))
    # The setting's help says what the no-op engine is for.
    described = DetectorResource.model_fields["engine"].description or ""
    assert "noop" in described and "never for real detection" in described
