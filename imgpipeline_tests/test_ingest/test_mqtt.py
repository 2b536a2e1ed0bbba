"""The MQTT bridge against Debian's Mosquitto and the real Kafka broker: images published with paho and
with mosquitto_pub land as detected frames; a bridge SIGKILLed mid-stream and started again loses and
duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest

from imgpipeline import ConfigError
from imgpipeline.cli.bridge import mqtt_letter
from imgpipeline.cli.samples import sample
from imgpipeline.defs.hours import hour_key
from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.tables.views import connect
from imgpipeline.defs.warehouse.assets import hourly_tables
from imgpipeline.ingest.messages import sha256_hex
from imgpipeline.ingest.mqtt import Journal, MqttBridge, source_of
from imgpipeline.resources import StorageResource, TrackingResource
from imgpipeline.resources.mqtt import MqttSettings
from imgpipeline.vision.quality import encode_jpeg
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import drain, landing_records, wait_for
from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all

pytestmark = [pytest.mark.integration, pytest.mark.instance, pytest.mark.results]


def publisher(settings: MqttSettings):
    """A camera's client: the same login and TLS settings as the bridge's."""
    client = settings.client()
    settings.connect(client)
    client.loop_start()
    return client


def publish(client, topic: str, payloads: list[bytes]) -> None:
    infos = [client.publish(topic, payload, qos=1) for payload in payloads]
    for info in infos:
        info.wait_for_publish(timeout=30)


def images(n: int, tag: str) -> list[bytes]:
    found = []
    for i in range(n):
        image = np.full((48, 64, 3), 80 + (i * 7) % 150, np.uint8)
        cv2.putText(image, f"{tag}{i}", (2, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        found.append(encode_jpeg(image))
    return found


def test_the_source_comes_from_the_topic_or_the_setting():
    assert source_of("cameras/cam7/frames", "cameras/+/frames", None) == "cam7"
    assert source_of("images/raw", "images/raw", "gate") == "gate"
    for topics, source, says in [(["images/raw"], None, "no `[+]` level"), (["a/#/b"], None, "not an MQTT"),
                                 (["cameras/+/x"], "../etc", "not a source id"),
                                 (["images/raw"], "gate\n", "not a source id")]:
        with pytest.raises(ConfigError, match=says):
            MqttBridge(None, None, topics, letter=mqtt_letter, source=source, settings=MqttSettings())


def test_published_images_land_as_detected_frames(mqtt, kafka, tmp_path, monkeypatch):

    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    said: list[str] = []
    bridge = MqttBridge(kafka, storage, ["cameras/+/frames"], letter=mqtt_letter, client_id="bridge-e2e",
                        settings=mqtt, log=said.append)
    # Subscribe first (the session keeps what comes while the bridge is away), then publish.
    bridge.run(idle_s=0.5)
    client = publisher(mqtt)
    photos = [sample("bus.jpg").read_bytes(), sample("zidane.jpg").read_bytes()]
    publish(client, "cameras/gate/frames", photos + [b"not an image at all"])
    publish(client, "cameras/../frames", photos[:1])  # a topic level that is no source id: dead-lettered
    client.loop_stop()
    host, _, port = mqtt.broker.rpartition(":")
    subprocess.run(["mosquitto_pub", "-h", host, "-p", port, "-q", "1", "-t", "cameras/yard/frames",
                    "-f", str(sample("bus.jpg"))], check=True, timeout=30)
    assert bridge.run(limit=5, idle_s=20) == 5, said
    # All acknowledged, the dead-lettered one too: nothing comes again.
    assert bridge.run(idle_s=1) == 0, said
    with fresh_instance() as instance:
        drain(kafka, storage, instance)
    records = {(r.source_id, r.status) for r in landing_records(storage)}
    assert sorted(records) == [("gate", "detected"), ("gate", "error"), ("yard", "detected")]
    by_status = [r for r in landing_records(storage) if r.source_id == "gate"]
    assert sum(r.status == "detected" for r in by_status) == 2
    assert any("bus" in {d["class_name"] for d in r.detections} for r in by_status)
    dead = {m["topic"]: m for m in (json.loads(m.value) for m in read_all(kafka, kafka.dlq_topic))}
    assert sorted(dead) == ["cameras/../frames", kafka.frames_topic]
    assert "image" in dead[kafka.frames_topic]["reason"].lower()
    assert "is not a source id" in dead["cameras/../frames"]["reason"]


def test_a_bridge_restarted_with_other_topics_drops_what_only_the_old_ones_asked_for(mqtt, kafka, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    said: list[str] = []
    old = MqttBridge(kafka, storage, ["old/+/frames"], letter=mqtt_letter, client_id="bridge-moved",
                     settings=mqtt, log=said.append)
    old.run(idle_s=0.5)  # the persistent session now holds this subscription
    client = publisher(mqtt)
    publish(client, "old/cam1/frames", images(2, "old"))  # queued for the session while it is away
    client.loop_stop()
    moved = MqttBridge(kafka, storage, ["cameras/+/frames"], letter=mqtt_letter, client_id="bridge-moved",
                       settings=mqtt, log=said.append)
    moved.run(idle_s=2)
    assert moved.run(idle_s=1) == 0  # dropped and acknowledged: nothing comes again
    assert sum("matches none of cameras/+/frames" in line for line in said) == 2, said
    assert read_all(kafka, kafka.frames_topic) == []


def test_a_bridge_killed_mid_stream_loses_and_duplicates_nothing(mqtt, kafka, tmp_path):
    import dagster as dg

    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic, "IMGPIPELINE_STORAGE_URI": storage.uri,
           "IMGPIPELINE_HOME": str(tmp_path), "IMGPIPELINE_MQTT_BROKER": mqtt.broker}
    command = [sys.executable, "-m", "imgpipeline.cli", "bridge", "mqtt", "--topic", "yard/+/f",
               "--client-id", "bridge-kill"]

    def start():
        bridge = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  start_new_session=True, text=True)
        first = bridge.stdout.readline()
        assert "bridge: subscribed" in first, first  # nothing published from here on is missed
        threading.Thread(target=bridge.stdout.read, daemon=True).start()  # the pipe never fills up
        return bridge

    bridge = start()
    client = publisher(mqtt)
    sent = images(300, "k")
    killed, published = threading.Event(), threading.Event()

    def camera() -> None:
        """The first half in one burst, so the kill finds frames in flight; the second half once the
        bridge is killed, so the kill always lands mid-stream and those frames wait in its session."""
        publish(client, "yard/cam-k/f", sent[:150])
        killed.wait(120)
        publish(client, "yard/cam-k/f", sent[150:])
        published.set()

    streaming = threading.Thread(target=camera, daemon=True)
    streaming.start()
    try:
        wait_for(lambda: len(read_all(kafka, kafka.frames_topic)) >= 80, 120, "the bridge's first 80 frames",
                 every_s=0.05)
    finally:
        os.killpg(bridge.pid, signal.SIGKILL)
        bridge.wait()
        killed.set()
    before = len(read_all(kafka, kafka.frames_topic))
    assert 80 <= before <= 150, before
    streaming.join(timeout=60)
    assert published.is_set(), "the camera could not publish its frames"
    bridge = start()  # its session kept what the first one had not acknowledged
    wanted = {f"cam-k-{sha256_hex(p)[:20]}" for p in sent}

    def on_kafka() -> set[str]:
        return {json.loads(m.value)["frame_id"] for m in read_all(kafka, kafka.frames_topic)}

    try:
        wait_for(lambda: on_kafka() >= wanted, 120, "every frame on Kafka")
    finally:
        os.killpg(bridge.pid, signal.SIGTERM)
    # SIGTERM ends it as Ctrl-C does; once it has ended, all it sent, late copies too, is on the topic.
    assert bridge.wait(timeout=30) == 130
    client.loop_stop()
    messages = [json.loads(m.value) for m in read_all(kafka, kafka.frames_topic)]
    by_id: dict[str, set] = {}
    for m in messages:
        by_id.setdefault(m["frame_id"], set()).add(json.dumps(m, sort_keys=True))
    assert set(by_id) == wanted  # none lost
    # A frame sent but not yet recorded when the bridge died went out again as the very same message…
    assert all(len(versions) == 1 for versions in by_id.values())
    # …and lands once: detected, and one row each in the frames table.
    with fresh_instance() as instance:
        drain(kafka, storage, instance, policy=BatchPolicy(fast_lane=False,
                                                           max_batch=400, max_wait_s=0, watch_s=0))
        hours = sorted({r.event_hour for r in landing_records(storage)})
        resources = {"storage": storage, "tracking": TrackingResource(zones_file="none")}
        assert dg.materialize([hourly_tables], instance=instance, resources=resources, tags={
            "dagster/asset_partition_range_start": hour_key(hours[0]),
            "dagster/asset_partition_range_end": hour_key(hours[-1])}).success
    rows = connect(storage).sql("SELECT frame_id, status FROM frames").fetchall()
    assert len(rows) == 300 and {f for f, _ in rows} == set(by_id) and {s for _, s in rows} == {"detected"}
    print(f"messages on Kafka: {len(messages)} for 300 frames ({len(messages) - 300} sent again)")


class Clock:
    """A clock the test moves: `now_is`."""

    def __init__(self, start: datetime):
        self.now_is = start

    def __call__(self) -> datetime:
        return self.now_is


def test_the_journal_reads_only_its_last_days(tmp_path):
    """The bridge's journal of first capture times is kept by day and only the last
    IMGPIPELINE_MQTT_JOURNAL_DAYS are read: a frame id seen within them keeps its time, one older is new."""
    clock = Clock(datetime(2026, 3, 10, 12, tzinfo=UTC))
    path = tmp_path / "cam.captured"
    journal = Journal(path, days=2, clock=clock)
    first = journal.captured("cam-aaa")
    assert first == clock.now_is and (tmp_path / "cam.captured.days" / "2026-03-10").exists()
    clock.now_is += timedelta(days=1)
    restarted = Journal(path, days=2, clock=clock)
    assert restarted.captured("cam-aaa") == first  # delivered again the next day: the same time
    # An older day's file, outside the window, made a directory: never read.
    (tmp_path / "cam.captured.days" / "2026-03-01").mkdir()
    clock.now_is += timedelta(days=1)  # 2026-03-12: the 10th is out of a two-day window
    assert restarted.captured("cam-aaa") == clock.now_is != first
    assert Journal(path, days=2, clock=clock).captured("cam-aaa") == clock.now_is
    assert set(restarted.times) == {"cam-aaa"}
    # A time cut short by a kill mid-append is no time: the id gets a new one, on a line of its own.
    with open(tmp_path / "cam.captured.days" / "2026-03-12", "a") as handle:
        handle.write("cam-bbb 2026-03-12T1")
    clock.now_is += timedelta(minutes=5)
    assert Journal(path, days=2, clock=clock).captured("cam-bbb") == clock.now_is
    assert Journal(path, days=2, clock=clock).captured("cam-bbb") == clock.now_is


def test_the_journal_folds_past_days_into_one_window_file_and_a_fold_cut_short_is_finished(tmp_path):
    """When the day changes the days before yesterday become one file of the window's entries, so a start
    reads three files whatever the bridge's age, and yesterday's file, which a bridge still running across
    midnight may append to, is left alone; a fold killed before or after its rename is finished by the
    next start with every time kept once, and a damaged window file loses only its damaged lines."""
    clock = Clock(datetime(2026, 3, 1, 12, tzinfo=UTC))
    path = tmp_path / "cam.captured"
    days, window = tmp_path / "cam.captured.days", tmp_path / "cam.captured.window"
    first = {}
    for day in range(10):  # ten days of one bridge (2026-03-01 to 10), three new frames a day
        journal = Journal(path, days=3, clock=clock)
        for n in range(3):
            first[f"cam-{day}-{n}"] = journal.captured(f"cam-{day}-{n}")
        clock.now_is += timedelta(days=1)
    # 2026-03-11: the 9th in the window file, the 10th (yesterday) and today in their day files; the days
    # before are dropped.
    journal = Journal(path, days=3, clock=clock)
    assert journal.captured("cam-9-0") == first["cam-9-0"] and journal.captured("cam-8-2") == first["cam-8-2"]
    assert journal.captured("cam-7-0") == clock.now_is  # out of the window: a new frame
    assert sorted(p.name for p in days.iterdir()) == ["2026-03-10", "2026-03-11"]
    folded = window.read_bytes()
    assert sorted(line.split()[0] for line in folded.decode().splitlines()) == [
        f"cam-8-{n}" for n in range(3)]
    # An older bridge of the camera still writing yesterday's file: its entry is read, not lost.
    with open(days / "2026-03-10", "a") as handle:
        handle.write(f"cam-late {first['cam-9-0']:%Y-%m-%dT%H:%M:%S.000Z}\n")
    assert Journal(path, days=3, clock=clock).captured("cam-late") == first["cam-9-0"]
    assert Journal(path, days=3, clock=clock).captured("cam-7-0") == clock.now_is
    assert window.read_bytes() == folded  # a start the same day folds nothing

    # The next day's fold killed before its rename (a stray file aside, the day file still there), then
    # after it (a day file folded in but not deleted): the next start finishes it, every time kept once.
    again = clock.now_is
    clock.now_is += timedelta(days=1)
    (tmp_path / ".cam.captured.window.k3x9_q.tmp").write_bytes(b"cam-9-0 2026-03-13T00:00:00.000Z\n\x00\xff")
    journal = Journal(path, days=3, clock=clock)
    assert journal.captured("cam-7-0") == again and journal.captured("cam-9-1") == first["cam-9-1"]
    assert journal.captured("cam-late") == first["cam-9-0"]
    assert journal.captured("cam-8-0") == clock.now_is  # the 9th is out of the window now
    assert sorted(p.name for p in days.iterdir()) == ["2026-03-11", "2026-03-12"]
    (days / "2026-03-10").write_text(f"cam-9-2 {first['cam-9-2']:%Y-%m-%dT%H:%M:%S.000Z}\n")
    assert Journal(path, days=3, clock=clock).captured("cam-9-2") == first["cam-9-2"]
    assert not (days / "2026-03-10").exists()
    ids = [line.split()[0] for line in window.read_text().splitlines()]
    assert sorted(ids) == sorted({*ids}) == sorted([*(f"cam-9-{n}" for n in range(3)), "cam-late"])

    # Damaged lines in the window file (cut short, no time, not text) are no times; the rest stand.
    with open(window, "ab") as handle:
        handle.write(b"cam-x 2026-03-1\nno-time\n\xff\xfe\x00 binary\n../../etc 2026-03-12T00:00:00.000Z\n")
    journal = Journal(path, days=3, clock=clock)
    assert journal.captured("cam-9-1") == first["cam-9-1"]
    assert journal.captured("cam-x") == clock.now_is
