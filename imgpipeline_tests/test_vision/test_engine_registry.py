"""The engine registry: an engine is chosen by its name alone, and a new engine is one new module."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from imgpipeline import ConfigError
from imgpipeline.cli.samples import sample
from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.ingest.messages import frame_key
from imgpipeline.resources import DetectorResource, KafkaResource, StorageResource
from imgpipeline.resources.settings import env_name
from imgpipeline.vision import engines, int8
from imgpipeline.vision.agreement import compare
from imgpipeline.vision.engines import Engine, Network, Sessions, register
from imgpipeline.vision.model_files import INT8_XML, ONNX, expected_sha256
from imgpipeline.vision.quality import decode_image
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import landing_records, run_resources
from imgpipeline_tests.test_vision.test_engines import video

CAPTURED = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def detected_in_a_run(tmp_path, kafka: KafkaResource, detector: DetectorResource,
                      image: bytes | None = None) -> dict:
    """The landing record of bus.jpg (or `image`) after a real detect_frames run over its URI with
    `detector`, on the real broker."""
    from imgpipeline.defs.streaming.detect_frames import detect_frames

    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    store = storage.open()
    key = frame_key("cam1", CAPTURED, "cam1-000001")
    store.put(key, image or sample("bus.jpg").read_bytes())
    with fresh_instance() as instance:
        result = detect_frames.execute_in_process(
            run_config={"ops": {"detect": {"config": {"uris": [store.uri(key)]}}}}, instance=instance,
            resources=run_resources(kafka=kafka, storage=storage, detector=detector))
    assert result.success
    (record,) = landing_records(storage)
    return record


def identity_of(record: LandingRecord) -> dict:
    return {name: getattr(record, name) for name in ("model", "model_sha256", "engine", "precision")}


@pytest.mark.integration
@pytest.mark.instance
@pytest.mark.results
@pytest.mark.parametrize("name", engines.names())
def test_every_registered_engine_is_chosen_by_its_name_and_named_on_its_rows(kafka, tmp_path, name):
    detector = DetectorResource(engine=name)
    record = detected_in_a_run(tmp_path, kafka, detector)
    assert record.status == "detected" and record.engine == name
    assert identity_of(record) == detector.load().identity.as_record()
    # An engine that runs a model names its file by sha256 and finds the bus; `noop` runs none (it
    # declares the class names as what it runs): the registry says which, never the row itself.
    runs_a_model = engines.get(name).runs != "names"
    assert (record.model_sha256 == "none") == (not runs_a_model), (name, record.model_sha256)
    if runs_a_model:  # by SHA256SUMS, or for the INT8 model made here, by its record
        path, digest = detector.model_file()
        made_here = int8.read_record(path.parent) if path.name == INT8_XML else None
        assert record.model_sha256 == digest
        assert digest == (made_here["sha256"] if made_here else expected_sha256(path.name))
    assert ("bus" in {d["class_name"] for d in record.detections}) == runs_a_model


class OnnxInOpenCV(Engine):
    """A new engine as its own module would define it: OpenCV DNN running the ONNX form."""

    name = "opencv-onnx"
    runs = "onnx"

    def sessions(self, network: Network, count: int, threads: int, precision: str) -> Sessions:
        import cv2

        def one():
            net = cv2.dnn.readNetFromONNX(str(network.path))
            heads = sorted(net.getUnconnectedOutLayersNames())  # head0, head1: the converter's order

            def infer(blob: np.ndarray):
                net.setInput(blob)
                return net.forward(heads)

            return infer

        return Sessions([one() for _ in range(count)], "f32").warmed(network.input_size)


@pytest.fixture
def registry():
    """The registry as it is now, put back after the test: what a test registers stays its own."""
    before = dict(engines.REGISTRY)
    yield
    engines.REGISTRY.clear()
    engines.REGISTRY.update(before)


@pytest.mark.integration
def test_an_engine_registered_like_the_others_is_chosen_by_its_name_alone(registry, kafka, monkeypatch,
                                                                         tmp_path):
    register(OnnxInOpenCV)
    assert engines.names()[0] == "opencv" and engines.names()[-1] == "noop"
    assert "opencv-onnx" in engines.names()
    # Chosen by the setting, like any engine.
    monkeypatch.setenv(env_name(DetectorResource, "engine"), "OpenCV-ONNX")
    resource = DetectorResource.from_env()
    assert resource.engine == "opencv-onnx"
    path, digest = resource.model_file()
    assert (path.name, digest) == (ONNX, expected_sha256(ONNX))

    # Its heads are the reference's, and the shared decoding makes them the reference's detections.
    reference = DetectorResource(engine="opencv").load()
    one = resource.load()
    images = [decode_image(sample(name).read_bytes()) for name in ("bus.jpg", "zidane.jpg")] + video(20)[::5]
    for image in images[:2]:
        for a, b in zip(reference.raw(image), one.raw(image), strict=True):
            assert a.shape == b.shape and np.abs(a - b).max() < 1e-3
    pool = DetectorResource(engine="opencv-onnx", workers=2).load_pool()
    found = [pool.detect(image) for image in images]
    agreement = compare([reference.detect(image) for image in images], found)
    assert agreement.reference > 0
    assert agreement.identical == agreement.reference == agreement.other, agreement.summary()
    assert {d.class_name for d in found[0]} >= {"bus", "person"}
    assert "person" in {d.class_name for d in found[1]}
    assert pool.size == 2 and pool.identity.as_record() == {
        "model": "yolov4-tiny-416", "model_sha256": expected_sha256(ONNX), "engine": "opencv-onnx",
        "precision": "f32"}

    # A real run with it names it on its rows.
    record = detected_in_a_run(tmp_path, kafka, resource)
    assert identity_of(record) == pool.identity.as_record()
    assert "bus" in {d["class_name"] for d in record.detections}

    # It accepts only `default`, as it declared: other precisions are refused with the fix.
    monkeypatch.setenv(env_name(DetectorResource, "precision"), "bf16")
    with pytest.raises(ConfigError, match="=bf16 applies to the openvino engine only; opencv-onnx runs at "
                                          "f32: unset it or use the openvino engine"):
        DetectorResource.from_env()


def test_an_unknown_engine_fails_at_load_naming_every_registered_one(registry, monkeypatch):
    register(OnnxInOpenCV)
    monkeypatch.setenv(env_name(DetectorResource, "engine"), "tensorrt")
    with pytest.raises(ConfigError) as refused:
        DetectorResource.from_env()
    assert str(refused.value) == (f"{env_name(DetectorResource, 'engine')}='tensorrt' is not known; "
                                  "use one of opencv, openvino, onnxruntime, opencv-onnx, recorded, noop")


def test_an_engine_is_registered_once_under_a_name_the_setting_can_give(registry):
    class Twin(OnnxInOpenCV):
        name = "opencv"

    class Shouting(OnnxInOpenCV):
        name = "OpenCV-ONNX"

    class Strict(OnnxInOpenCV):
        name = "strict"
        precisions = ("f32",)

    with pytest.raises(ValueError, match="the name 'opencv' is taken by OpenCV"):
        register(Twin)
    with pytest.raises(ValueError, match="a lowercase word"):
        register(Shouting)
    with pytest.raises(ValueError, match="every engine accepts the precision `default`"):
        register(Strict)
    assert engines.names() == ("opencv", "openvino", "onnxruntime", "recorded", "noop")
