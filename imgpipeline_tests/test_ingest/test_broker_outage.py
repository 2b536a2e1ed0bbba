"""A Kafka broker frozen (SIGSTOP) for longer than the delivery timeout while `imgpipeline produce video` and
the MQTT bridge send: both finish, only what Kafka acknowledged is in the producer's ledger, what failed is
said with its reason and sent again, and every frame lands once.

Prints its figures (frames sent, failed, sent again, landed; seconds from the broker's return until the
producer ended); run with `-s` to see them. No timing is asserted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from kafka import TopicPartition

from imgpipeline.cli.samples import sample
from imgpipeline.ingest.messages import sha256_hex
from imgpipeline.ingest.producer import Ledger
from imgpipeline.resources import DetectorResource, StorageResource
from imgpipeline_tests.conftest import fresh_topics
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import drain, landing_records, wait_for
from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all
from imgpipeline_tests.test_ingest.test_mqtt import images, publish, publisher

pytestmark = [pytest.mark.integration, pytest.mark.instance, pytest.mark.edge]

# Test-sized Kafka client timeouts: the broker stays frozen three delivery timeouts.
TIMEOUTS = {"KAFKA_REQUEST_TIMEOUT_MS": "2000", "KAFKA_DELIVERY_TIMEOUT_MS": "5000",
            "KAFKA_MAX_BLOCK_MS": "3000"}
FROZEN_S = 15
VIDEO_FRAMES = 200


def messages_on(kafka) -> int:
    consumer = kafka.consumer(group_id=None)
    ends = consumer.end_offsets([TopicPartition(kafka.frames_topic, p) for p in (0, 1)])
    consumer.close()
    return sum(ends.values())


def frame_ids(kafka, source: str) -> Counter:
    return Counter(m["frame_id"] for m in (json.loads(r.value) for r in read_all(kafka, kafka.frames_topic))
                   if m["source_id"] == source)


@pytest.fixture
def started():
    """Processes a test starts, each in a process group of its own; whatever still runs at the end (a
    producer that hung) is killed."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def start(started: list, command: list[str], env: dict, **options) -> subprocess.Popen:
    process = subprocess.Popen(command, env=env, text=True, start_new_session=True, **options)
    started.append(process)
    return process


def counts(summary: str) -> tuple[int, int]:
    """(sent, failed) of a producer's summary line."""
    return tuple(int(summary.split(f"{word} ")[1].split(",")[0]) for word in ("sent", "failed"))


@pytest.fixture
def own_kafka(own_services):
    """Fresh topics on a broker of this module's own: the test freezes it."""
    return fresh_topics(own_services)


@pytest.mark.long(0.5)
def test_a_broker_frozen_past_the_delivery_timeout_loses_nothing(own_services, own_kafka, mqtt, tmp_path,
                                                                   started):
    services, kafka = own_services, own_kafka
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    env = {**os.environ, **TIMEOUTS, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic, "IMGPIPELINE_STORAGE_URI": storage.uri,
           "IMGPIPELINE_HOME": str(tmp_path), "IMGPIPELINE_MQTT_BROKER": mqtt.broker}
    cli = [sys.executable, "-m", "imgpipeline.cli"]
    bridge = start(started, [*cli, "bridge", "mqtt", "--topic", "yard/+/f", "--client-id", "bridge-frozen"],
                   env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    said: list[str] = []
    first = bridge.stdout.readline()
    assert "bridge: subscribed" in first, first
    threading.Thread(target=lambda: said.extend(bridge.stdout), daemon=True).start()
    camera = publisher(mqtt)
    published = images(60, "frozen")
    publish(camera, "yard/cam-m/f", published[:30])
    wait_for(lambda: messages_on(kafka) >= 30, 180, "the bridge's first 30 frames on Kafka", every_s=0.05)

    video = [*cli, "produce", "video", str(sample("bikes.mp4")), "--source", "cam-v",
             "--max-frames", str(VIDEO_FRAMES)]
    producer = start(started, video, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: messages_on(kafka) > 30, 120, "the producer's first frame on Kafka", every_s=0.05)
    os.kill(producer.pid, signal.SIGSTOP)  # holds it mid-stream while the broker is frozen
    os.kill(services.kafka.pid, signal.SIGSTOP)
    try:
        os.kill(producer.pid, signal.SIGCONT)
        publish(camera, "yard/cam-m/f", published[30:])  # Mosquitto takes them; Kafka cannot
        time.sleep(FROZEN_S)  # scenario: the fault itself, a broker away for three delivery timeouts
    finally:
        os.kill(services.kafka.pid, signal.SIGCONT)
    returned = time.monotonic()
    out, err = producer.communicate(timeout=180)
    ended_after_s = time.monotonic() - returned
    summary = out.strip().splitlines()[-1]
    failures = [line for line in err.splitlines() if line.startswith("  failed: ")]
    assert producer.returncode == 1, (summary, err[-2000:])
    sent, failed = counts(summary)
    assert 0 < failed == len(failures) and sent + failed == VIDEO_FRAMES, summary
    assert all("not acknowledge it within KAFKA_DELIVERY_TIMEOUT_MS=5000" in line for line in failures)
    days = next(tmp_path.rglob("cam-v.sent.days"))
    ledger = Ledger(days.with_name("cam-v.sent")).entries()
    assert len(ledger) == sent  # only what Kafka acknowledged
    assert {frame_id for frame_id, _ in ledger} <= set(frame_ids(kafka, "cam-v"))

    again = subprocess.run(video, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip().splitlines()[-1] == \
        f"cam-v → {kafka.frames_topic}: sent {failed}, already present {sent}, failed 0"
    every_frame = {f"cam-v-{i:06d}" for i in range(1, VIDEO_FRAMES + 1)}
    assert set(frame_ids(kafka, "cam-v")) == every_frame
    # A frame sent again (Kafka may have taken its first send after all) keeps its capture time: it lands
    # in the hour it did before, where it is a duplicate, whenever the re-run comes.
    times: dict[str, set] = {}
    for m in (json.loads(r.value) for r in read_all(kafka, kafka.frames_topic)):
        times.setdefault(m["frame_id"], set()).add(m["captured_at"])
    assert all(len(t) == 1 for f, t in times.items() if f.startswith("cam-v-")), times

    # The bridge kept what Kafka did not take in its MQTT session and sent it once the broker was back.
    wanted = {f"cam-m-{sha256_hex(p)[:20]}" for p in published}
    wait_for(lambda: set(frame_ids(kafka, "cam-m")) == wanted, 180, "the bridge's 60 frames on Kafka")
    os.killpg(bridge.pid, signal.SIGTERM)
    assert bridge.wait(timeout=60) == 130
    camera.loop_stop()
    assert any("not acknowledged" in line for line in said), said

    with fresh_instance() as instance:
        drain(kafka, storage, instance, detector=DetectorResource(engine="noop"))
    landed = Counter((r.source_id, r.frame_id) for r in landing_records(storage))
    assert {f for s, f in landed if s == "cam-v"} == every_frame
    assert {f for s, f in landed if s == "cam-m"} == wanted
    assert set(landed.values()) == {1}
    on_kafka = sum(frame_ids(kafka, "cam-v").values()) + sum(frame_ids(kafka, "cam-m").values())
    print(f"\nbroker frozen {FROZEN_S} s (delivery timeout 5 s): produce video sent {sent}, failed "
          f"{failed}, sent again {failed} by the next run; it ended {ended_after_s:.1f} s after the broker "
          f"returned; the bridge forwarded 60; {on_kafka} messages on Kafka for {len(landed)} frames, each "
          "landed once")
