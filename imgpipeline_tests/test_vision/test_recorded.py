"""The `recorded` engine: OpenVINO's detections of each frame kept per machine and given again; a damaged,
hostile, another frame's or half-written kept file is never given; other settings never get another's
detections; a file that cannot be written loses no detection."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from imgpipeline.environment import cache_dir
from imgpipeline.resources import DetectorResource
from imgpipeline.vision.engines.recorded import KEPT_KEYS
from imgpipeline_tests.test_vision.test_engines import video


@pytest.fixture(scope="module")
def frames():
    found = video(240)[::20]
    # The frame with the most detections first: its kept rows have an order to keep.
    real = DetectorResource(engine="openvino").load()
    return sorted(found, key=lambda f: -len(real.detect(f)))


@pytest.fixture(scope="module")
def real(frames):
    """OpenVINO's own detections of the frames, as one detector and as a run's pool."""
    one, pool = DetectorResource(engine="openvino").load(), DetectorResource(engine="openvino").load_pool()
    found = [one.detect(f) for f in frames]
    assert [pool.detect(f) for f in frames] == found and len(found[0]) >= 3
    return found


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of the test's own for the kept detections; the machine's samples and wheels in it, so that
    the processes a test starts neither download nor extract the video again."""
    for shared in ("samples", "wheels"):
        (tmp_path / shared).symlink_to(cache_dir() / shared, target_is_directory=True)
    monkeypatch.setenv("IMGPIPELINE_CACHE_DIR", str(tmp_path))
    return tmp_path / "recorded"


def digest(frame) -> str:
    return hashlib.sha256(f"{frame.shape}{frame.dtype}".encode() + frame.tobytes()).hexdigest()


def kept(cache) -> list:
    return sorted(p for p in cache.rglob("*.json") if not p.name.startswith("."))


def row(d) -> list:
    return [d.class_id, d.confidence, list(d.box)]


def test_a_frame_that_comes_again_gets_the_detections_kept_for_it(frames, real, cache):
    pool = DetectorResource(engine="recorded").load_pool()
    assert pool.identity.engine == "recorded"
    assert pool.identity.precision == DetectorResource(engine="openvino").load().identity.precision
    assert [pool.detect(f) for f in frames] == real
    assert len(kept(cache)) == len({digest(f) for f in frames})
    # What is given again is what was kept, not inferred anew: a kept file that lost its last row (as the
    # detector could have given it) is given as it is.
    [path] = [p for p in kept(cache) if p.stem == digest(frames[0])]
    path.write_text(json.dumps({"frame": digest(frames[0]), "detections": [row(d) for d in real[0][:-1]]}))
    again = DetectorResource(engine="recorded").load_pool()
    assert again.detect(frames[0]) == real[0][:-1]
    assert [again.detect(f) for f in frames[1:]] == real[1:]


def hostile(frame, found) -> dict[str, bytes]:
    """Kept files this engine never writes for `frame` (its detections `found`, three or more)."""
    rows = [row(d) for d in found]
    height, width = frame.shape[:2]

    def with_row(changed: list) -> bytes:
        return json.dumps({"frame": digest(frame), "detections": [changed, *rows[1:]]}).encode()

    class_id, confidence, (x, y, w, h) = rows[0]
    return {
        "empty": b"", "cut short": json.dumps({"frame": digest(frame), "detections": rows}).encode()[:-9],
        "not json": b"\xff\xfe not json", "another shape": b'{"a": 1}',
        "rows alone": json.dumps(rows).encode(),
        "another frame's": json.dumps({"frame": "0" * 64, "detections": rows}).encode(),
        "negative class": with_row([-1, confidence, [x, y, w, h]]),
        "class past the names": with_row([999999, confidence, [x, y, w, h]]),
        "class as text": with_row([str(class_id), confidence, [x, y, w, h]]),
        "class as true": with_row([True, confidence, [x, y, w, h]]),
        "confidence over 1": with_row([class_id, 7.5, [x, y, w, h]]),
        "confidence under the threshold": with_row([class_id, 0.1, [x, y, w, h]]),
        "confidence unrounded": with_row([class_id, confidence + 1e-7, [x, y, w, h]]),
        "three numbers a box": with_row([class_id, confidence, [x, y, w]]),
        "box of floats": with_row([class_id, confidence, [float(x), y, w, h]]),
        "box left of the frame": with_row([class_id, confidence, [-5, y, w, h]]),
        "box past the frame": with_row([class_id, confidence, [x, y, width, h]]),
        "box of no width": with_row([class_id, confidence, [x, y, 0, h]]),
        "infinite box": with_row([class_id, confidence, [x, y, w, h]]).replace(b"[%d," % x, b"[1e400,", 1),
        "rows out of order": json.dumps({"frame": digest(frame), "detections": rows[::-1]}).encode(),
        "past its size": b" " * 1_100_000 + json.dumps({"frame": digest(frame), "detections": rows}).encode(),
    }


def test_a_damaged_or_hostile_kept_file_is_detected_again_and_replaced(frames, real, cache):
    detector = DetectorResource(engine="recorded").load()
    assert detector.detect(frames[0]) == real[0]
    [path] = kept(cache)
    whole = path.read_bytes()
    for what, data in hostile(frames[0], real[0]).items():
        path.write_bytes(data)
        assert detector.detect(frames[0]) == real[0], what
        assert path.read_bytes() == whole, what
    # Not a file to read: a link to an endless device and a pipe no one writes to, neither followed nor
    # waited on; the pipe stands where the kept file would go (not kept), the detection does not fail.
    path.unlink()
    path.symlink_to("/dev/zero")
    assert detector.detect(frames[0]) == real[0] and path.read_bytes() == whole
    path.unlink()
    os.mkfifo(path)
    assert detector.detect(frames[0]) == real[0]
    assert not path.is_fifo() and path.read_bytes() == whole


def test_a_kept_file_that_cannot_be_written_loses_no_detection(frames, real, cache):
    detector = DetectorResource(engine="recorded").load()
    [folder] = cache.iterdir()
    (folder / digest(frames[0])[:2]).write_text("a file where its folder would go")
    assert detector.detect(frames[0]) == real[0]
    assert detector.detect(frames[0]) == real[0]
    assert kept(cache) == []


@pytest.mark.parametrize("setting", [{"confidence": 0.6}, {"nms": 0.3}, {"classes": ["person"]},
                                     {"input_size": 320}, {"precision": "f32"}, {"workers": 1}])
def test_other_settings_keep_detections_of_their_own(frames, cache, setting):
    DetectorResource(engine="recorded").load_pool().detect(frames[0])
    found = DetectorResource(engine="recorded", **setting).load_pool().detect(frames[0])
    assert found == DetectorResource(engine="openvino", **setting).load_pool().detect(frames[0])
    assert len(list(cache.iterdir())) == 2


def test_the_cache_keeps_the_keys_used_last(frames, cache):
    cache.mkdir(parents=True)
    for i in range(KEPT_KEYS + 2):
        older = cache / f"older-{i}"
        (older / "ab").mkdir(parents=True)
        os.utime(older, (time.time() - 86400 + i, time.time() - 86400 + i))
    DetectorResource(engine="recorded").load().detect(frames[0])
    left = sorted(p.name for p in cache.iterdir())
    assert len(left) == KEPT_KEYS and len(kept(cache)) == 1
    assert [n for n in left if n.startswith("older-")] == [f"older-{i}" for i in range(3, KEPT_KEYS + 2)]


CHILD = """
import os, signal, sys
from imgpipeline.resources import DetectorResource
from imgpipeline_tests.test_vision.test_engines import video
detector, frame = DetectorResource(engine="recorded").load(), video(240)[::20][0]
os.replace = lambda part, path: os.kill(os.getpid(), signal.SIGKILL)  # killed between the write and rename
detector.detect(frame)
"""


def test_a_process_killed_while_keeping_a_frame_leaves_nothing_given_for_it(frames, real, cache):
    ran = subprocess.run([sys.executable, "-c", CHILD], timeout=300)
    assert ran.returncode == -signal.SIGKILL
    [part] = [p for p in cache.rglob(".*.json.*")]  # written whole, not renamed: never read
    at = next(i for i, f in enumerate(frames) if part.name.startswith(f".{digest(f)}.json."))
    frame = frames[at]
    assert kept(cache) == []
    detector = DetectorResource(engine="recorded").load()
    assert detector.detect(frame) == real[at]
    assert [p.stem for p in kept(cache)] == [digest(frame)]


BOTH = """
from imgpipeline.resources import DetectorResource
from imgpipeline_tests.test_vision.test_engines import video
pool = DetectorResource(engine="recorded").load_pool()
for frame in video(240)[::20]:
    pool.detect(frame)
"""


def test_two_processes_keeping_the_same_frames_at_once_keep_what_openvino_gives(frames, real, cache):
    children = [subprocess.Popen([sys.executable, "-c", BOTH]) for _ in range(2)]
    assert [child.wait(timeout=300) for child in children] == [0, 0]
    assert sorted(p.stem for p in kept(cache)) == sorted({digest(f) for f in frames})
    assert list(cache.rglob(".*.json.*")) == []  # every part-file renamed
    again = DetectorResource(engine="recorded").load_pool()
    assert [again.detect(f) for f in frames] == real


def test_a_key_pruned_while_its_detector_runs_is_kept_again(frames, real, cache):
    import shutil

    detector = DetectorResource(engine="recorded").load()
    assert detector.detect(frames[0]) == real[0]
    [folder] = cache.iterdir()
    shutil.rmtree(folder)  # as another process's pruning removes it
    assert [detector.detect(f) for f in frames[:3]] == real[:3]
    assert len(kept(cache)) == 3
