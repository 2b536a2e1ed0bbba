"""The `recorded` engine: OpenVINO's detections of each frame kept per machine and given again; a damaged,
hostile or half-written kept file is never given; other settings never get another's detections."""

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgpipeline.resources import DetectorResource
from imgpipeline_tests.test_vision.test_engines import video


@pytest.fixture(scope="module")
def frames():
    return video(12)


@pytest.fixture(scope="module")
def real(frames):
    """OpenVINO's own detections of the frames."""
    pool = DetectorResource(engine="openvino").load_pool()
    return [pool.detect(f) for f in frames]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGPIPELINE_CACHE_DIR", str(tmp_path))
    return tmp_path / "recorded"


def kept(cache) -> list:
    return sorted(p for p in cache.rglob("*.json") if not p.name.startswith("."))


class Refusing:
    """A detector that must not be asked: the frame's detections are to come from what was kept."""

    def __init__(self, detector):
        self.identity, self.class_names = detector.identity, detector.class_names

    def detect(self, image):
        raise AssertionError("inference ran for a frame whose detections were kept")


def test_the_second_time_a_frame_comes_its_kept_detections_are_given_without_inference(frames, real, cache):
    pool = DetectorResource(engine="recorded").load_pool()
    assert pool.identity.engine == "recorded"
    assert pool.identity.precision == DetectorResource(engine="openvino").load().identity.precision
    with ThreadPoolExecutor(max_workers=pool.size) as threads:  # the pool's detectors side by side
        assert list(threads.map(pool.detect, frames)) == real
    assert len(kept(cache)) == len({f.tobytes() for f in frames})
    again = DetectorResource(engine="recorded").load()
    again.detector = Refusing(again.detector)
    assert [again.detect(f) for f in frames] == real


@pytest.mark.parametrize("damage", [
    b"", b"[[0, 0.5, [1, 2, 3", b"not json", b'{"a": 1}', b"[[0, 0.5, [1, 2, 3]]]",
    b"[[-1, 0.9, [1, 2, 3, 4]]]", b"[[999999, 0.9, [1, 2, 3, 4]]]", b'[["0", 7.5, [1, 2, 3, 4]]]',
    b"[[0, 0.9, [1e400, 2, 3, 4]]]"])
def test_a_damaged_or_hostile_kept_file_is_detected_again_and_replaced(frames, real, cache, damage):
    detector = DetectorResource(engine="recorded").load()
    assert detector.detect(frames[0]) == real[0]
    [path] = kept(cache)
    path.write_bytes(damage)
    assert detector.detect(frames[0]) == real[0]
    assert json.loads(path.read_bytes()) == [[d.class_id, d.confidence, list(d.box)] for d in real[0]]


def test_other_thresholds_keep_detections_of_their_own(frames, cache):
    DetectorResource(engine="recorded").load().detect(frames[0])
    strict = DetectorResource(engine="recorded", confidence=0.6).load()
    found = strict.detect(frames[0])
    assert found == DetectorResource(engine="openvino", confidence=0.6).load().detect(frames[0])
    assert all(d.confidence >= 0.6 for d in found)
    assert len({p.parent.parent for p in kept(cache)}) == 2


CHILD = """
import sys
from imgpipeline.resources import DetectorResource
from imgpipeline_tests.test_vision.test_engines import video
detector = DetectorResource(engine="recorded").load()
while True:
    for frame in video(60):
        detector.detect(frame)
"""


def test_a_process_killed_while_keeping_detections_leaves_none_half_written(frames, real, cache):
    child = subprocess.Popen([sys.executable, "-c", CHILD])
    try:
        deadline = time.monotonic() + 120
        while len(kept(cache)) < 20 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert child.poll() is None, "the child ended before it was killed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(kept(cache)) >= 20
    for path in kept(cache):  # every file a kept one is whole
        assert isinstance(json.loads(path.read_bytes()), list)
    again = DetectorResource(engine="recorded").load()
    assert [again.detect(f) for f in frames] == real
