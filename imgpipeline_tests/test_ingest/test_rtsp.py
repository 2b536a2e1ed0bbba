"""The video producer against a real RTSP camera (Debian's RTSP::Server relaying the street video,
published by ffmpeg) and the real Kafka broker: frames arrive with unique ids; a camera killed
mid-stream and started again is reconnected and nothing is lost or sent twice; a camera that is
not there ends with a clear error and sends nothing."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest

from imgpipeline.cli.samples import sample
from imgpipeline.ingest.messages import parse_message
from imgpipeline.ingest.producer import FrameProducer, Ledger
from imgpipeline.ingest.sources import LiveStream, StreamLost, is_live, video_frames
from imgpipeline.resources import StorageResource
from imgpipeline.services.process import free_port
from imgpipeline.services.rtsp import RtspCamera, rtsp_camera_missing
from imgpipeline.vision.quality import decode_image
from imgpipeline_tests.conftest import CI_ENV, require_tool, s3_storage_resource
from imgpipeline_tests.pipeline import wait_for
from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all

# Short waits and timeouts; RTSP::Server relays over UDP only.
QUICK = LiveStream(first_delay_s=0.2, max_delay_s=1.0, attempts=30, open_timeout_s=2.0,
                   read_timeout_s=2.0, rtsp_transport="udp")
LIVE_ID = re.compile(r"^(?P<run>[a-z]+-\d{8}T\d{6})-(?P<number>\d{6})$")


@pytest.fixture
def camera(tmp_path):
    require_tool(rtsp_camera_missing())
    camera = RtspCamera(tmp_path / "camera", sample("bikes.mp4"))
    camera.start()
    yield camera
    assert camera.stop()


def sent_frames(kafka, storage: StorageResource) -> list[tuple]:
    """(message, decoded image) of every frame on the topic."""
    store = storage.open()
    found = []
    for record in read_all(kafka, kafka.frames_topic):
        message, _ = parse_message(record.value, record.headers)
        found.append((message, decode_image(store.get(store.key_for(message.uri)))))
    return found


@pytest.mark.parametrize(("ci", "outcome"), [(False, pytest.skip.Exception), (True, pytest.fail.Exception)])
def test_without_its_camera_a_test_skips_on_a_developers_machine_and_fails_in_ci(
        request, monkeypatch, tmp_path, ci, outcome):
    """CI, where .ci/run installs the camera's packages, must not stay green with the camera's tests never
    run because an install failed: there a missing camera fails them, naming the packages."""
    monkeypatch.setenv("PATH", str(tmp_path))  # neither ffmpeg nor perl
    if ci:
        monkeypatch.setenv(CI_ENV, "1")
    else:
        monkeypatch.delenv(CI_ENV, raising=False)
    with pytest.raises(BaseException) as raised:
        request.getfixturevalue("camera")
    assert raised.type is outcome and "apt-get install ffmpeg librtsp-server-perl" in str(raised.value)


def test_reconnect_waits_double_up_to_the_cap():
    waits = [LiveStream().delay_s(attempt) for attempt in range(1, 8)]
    assert waits == [1, 2, 4, 8, 16, 30, 30]
    assert [is_live(s) for s in ("rtsp://cam.local/s", "RTSPS://cam/s", "udp://@:5000", "street.mp4",
                                 "/data/cam1.mkv", "https://example.org/v.mp4")] == [
        True, True, True, False, False, False]


@pytest.mark.integration
def test_cli_sends_frames_of_an_rtsp_camera_with_ids_unique_across_restarts(camera, kafka, tmp_path):
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    env = {**os.environ, "IMGPIPELINE_HOME": str(tmp_path),
           "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic,
           "IMGPIPELINE_STORAGE_URI": storage.uri, "OPENCV_FFMPEG_CAPTURE_OPTIONS": "rtsp_transport;udp"}

    def produce():
        result = subprocess.run([sys.executable, "-m", "imgpipeline.cli", "produce", "video", camera.url,
                                 "--source", "gate", "--fps", "10", "--max-frames", "12"],
                                env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    assert produce() == f"gate → {kafka.frames_topic}: sent 12, already present 0, failed 0"
    assert produce() == f"gate → {kafka.frames_topic}: sent 12, already present 0, failed 0"
    frames = sent_frames(kafka, storage)
    ids = [message.frame_id for message, _ in frames]
    assert len(ids) == 24 and len(set(ids)) == 24
    runs = {LIVE_ID.match(frame_id)["run"] for frame_id in ids}
    assert len(runs) == 2  # each run of the producer numbers its frames under its own start time
    for run in runs:
        assert sorted(i for i in ids if i.startswith(run)) == [f"{run}-{n:06d}" for n in range(1, 13)]
    assert {image.shape for _, image in frames} == {(272, 640, 3)}
    assert {message.source_id for message, _ in frames} == {"gate"}


@pytest.mark.integration
def test_a_camera_killed_mid_stream_is_reconnected_and_nothing_is_lost(camera, kafka, services, tmp_path):
    storage = s3_storage_resource(services)
    producer = FrameProducer(kafka, storage, "yard", ledger=Ledger(tmp_path / "yard.sent"), flush_every=5)
    said: list[str] = []
    frames = video_frames(camera.url, "yard", fps=10, max_frames=40, live=QUICK, log=said.append)
    outcome: dict = {}

    def send():
        try:
            outcome["summary"] = producer.send_all(frames, progress=False)
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=send)
    worker.start()
    wait_for(lambda: producer.summary.sent >= 10 or not worker.is_alive(), 60, "the first 10 frames sent",
             every_s=0.05)
    assert producer.summary.sent >= 10, outcome
    url = camera.url
    os.killpg(camera.pid, signal.SIGKILL)  # server and publisher die at once, as a camera does
    killed = datetime.now(UTC)
    camera.stop()
    time.sleep(2)  # scenario: the camera stays away two seconds
    camera.start()
    back = datetime.now(UTC)
    assert camera.url == url
    worker.join(timeout=120)

    assert not worker.is_alive() and "error" not in outcome, outcome
    summary = outcome["summary"]
    assert (summary.sent, summary.failed) == (40, 0)
    assert any(line.startswith(f"stream {url} dropped after ") for line in said), said
    assert any(line.startswith(f"reconnected to {url} after ") for line in said), said
    sent = sent_frames(kafka, storage)
    ids = [message.frame_id for message, _ in sent]
    run = LIVE_ID.match(ids[0])["run"]
    assert sorted(ids) == [f"{run}-{n:06d}" for n in range(1, 41)]  # each once, none missing
    captured = [message.captured for message, _ in sent]
    assert any(when < killed for when in captured) and any(when > back for when in captured)
    assert {image.shape for _, image in sent} == {(272, 640, 3)}


@pytest.mark.integration
@pytest.mark.parametrize("server", ["nothing listens", "answers nothing"])
def test_a_camera_that_is_not_there_ends_with_a_clear_error_and_sends_nothing(server, kafka, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    if server == "answers nothing":
        silent.listen(8)  # connections are accepted by the kernel and never answered
        port = silent.getsockname()[1]
    else:
        port = free_port()
    # A camera's login lives in its URL: it is never said.
    url, shown = f"rtsp://admin:s3cret@127.0.0.1:{port}/camera", f"rtsp://***@127.0.0.1:{port}/camera"
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    producer = FrameProducer(kafka, storage, "ghost", ledger=Ledger(tmp_path / "ghost.sent"))
    said: list[str] = []
    live = LiveStream(first_delay_s=0.1, max_delay_s=0.5, attempts=3, open_timeout_s=1.0, read_timeout_s=1.0)
    try:
        gives_up = f"cannot open stream {re.escape(shown)}: 3 attempts in a row failed"
        with pytest.raises(StreamLost, match=gives_up):
            producer.send_all(video_frames(url, "ghost", live=live, log=said.append), progress=False)
    finally:
        silent.close()
    assert said == [f"cannot open stream {shown}; reconnecting in 0.1 s (attempt 2)",
                    f"cannot open stream {shown}; reconnecting in 0.2 s (attempt 3)"]
    assert producer.summary.sent == 0
    assert read_all(kafka, kafka.frames_topic) == []
