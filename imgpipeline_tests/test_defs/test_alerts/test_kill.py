"""An alerts backfill SIGKILLed mid-work and run again: the alerts, numbers and clips of an unbroken run,
every alert on Kafka and at its webhook, a repeat (a kill between a send and its record) only ever the
same alert under the same key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from datetime import timedelta

import dagster as dg
import pytest

from imgpipeline.defs.alerts.assets import alerts
from imgpipeline.defs.tables import ALERTS
from imgpipeline.defs.warehouse.assets import hourly_tables
from imgpipeline.resources import AlertsResource, KafkaResource, StorageResource, TrackingResource
from imgpipeline.resources.mqtt import MqttSettings
from imgpipeline_tests.instances import bare_home, fresh_instance
from imgpipeline_tests.pipeline import kill_when
from imgpipeline_tests.test_defs.test_alerts.scene import START, ZONES, records
from imgpipeline_tests.test_defs.test_alerts.test_alerts import Hook, stored_alerts
from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all

pytestmark = [pytest.mark.integration, pytest.mark.instance]

HOURS = 10
FIRST = START.replace(hour=0, minute=0, second=0)
# A scene across the end of each of the first HOURS hours: the range holds the hour after the last too.
RANGE = (f"{FIRST:%Y-%m-%d-%H}:00", f"{FIRST + timedelta(hours=HOURS):%Y-%m-%d-%H}:00")
RULES = """
notify: {ops: {url: "%s", backoff_s: 0.05}}
rules:
  - {name: through-door, kind: line_cross, line: door, classes: [person], notify: [ops]}
  - {name: on-the-bench, kind: zone_enter, zone: bench, classes: [person], notify: [ops]}
  - {name: car-seen, kind: class, classes: [car]}
"""


def clips_of(storage) -> dict[str, int]:
    """Each stored clip with the frames it holds."""
    import io

    import av

    store, found = storage.open(), {}
    for key in store.list("annotated/"):
        if key.endswith(".webm"):
            with av.open(io.BytesIO(store.get(key))) as clip:
                found[key] = sum(1 for packet in clip.demux(video=0) if packet.size)
    return found


@pytest.mark.long(1)
@pytest.mark.covered("test_tracking/test_kill.py: a killed backfill run again on PostgreSQL; the alerts' "
                     "numbers and sends are kept in storage and Kafka, not in the instance")
def test_a_killed_alerts_backfill_run_again_equals_an_unbroken_one(tmp_path, kafka, services):
    hook = Hook(failures=0)
    (tmp_path / "zones.yaml").write_text(ZONES)
    (tmp_path / "alerts.yaml").write_text(RULES % hook.url)
    clean, broken = (StorageResource(uri=(tmp_path / name).as_uri()) for name in ("clean", "broken"))
    clean_kafka = KafkaResource(bootstrap_servers=kafka.bootstrap_servers, frames_topic=kafka.frames_topic,
                                alerts_topic=f"{kafka.alerts_topic}-clean")
    clean_kafka.ensure_topics()
    for storage in (clean, broken):
        for h in range(HOURS):
            records(storage.open(), FIRST + timedelta(hours=h, minutes=59, seconds=50), f"cam{h:02d}",
                    f"frames-0-{h}00-{h}99")
    tags = {"dagster/asset_partition_range_start": RANGE[0], "dagster/asset_partition_range_end": RANGE[1]}
    tracking = TrackingResource(zones_file=str(tmp_path / "zones.yaml"))
    rules = AlertsResource(alerts_file=str(tmp_path / "alerts.yaml"))
    with fresh_instance() as instance:
        for storage, topic in ((clean, clean_kafka), (broken, kafka)):
            resources = {"storage": storage, "kafka": topic, "tracking": tracking, "alert_rules": rules}
            assert dg.materialize([hourly_tables], instance=instance, resources=resources, tags=tags).success
        assert dg.materialize([alerts], instance=instance, tags=tags, resources={
            "storage": clean, "kafka": clean_kafka, "tracking": tracking, "alert_rules": rules,
            "mqtt": MqttSettings()}).success
    unbroken = stored_alerts(clean)
    sent_unbroken = len(hook.requests)
    # A crossing and a visit an hour (the parked car: one episode, seen on every frame of the source)
    assert len(unbroken) == 2 * HOURS + 1 and sent_unbroken == 2 * HOURS

    env = {**os.environ, "IMGPIPELINE_STORAGE_URI": broken.uri,
           "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic,
           "IMGPIPELINE_ALERTS_TOPIC": kafka.alerts_topic,
           "IMGPIPELINE_ZONES_FILE": str(tmp_path / "zones.yaml"),
           "IMGPIPELINE_ALERTS_FILE": str(tmp_path / "alerts.yaml"),
           "IMGPIPELINE_HOME": str(tmp_path), "DAGSTER_HOME": bare_home(tmp_path / "dagster")}
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "imgpipeline.definitions",
               "--select", "alerts", "--partition-range", "...".join(RANGE)]
    folder = broken.open().folder
    kill_when(command, env, folder / ALERTS.hour_key(FIRST + timedelta(hours=HOURS // 2)),
              folder / ALERTS.hour_key(FIRST + timedelta(hours=HOURS)))

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert stored_alerts(broken) == unbroken
    # Each alert's clip, whole: the kill left none half-written, and the run again made those it had not.
    clips = {name: clips_of(storage) for name, storage in (("unbroken", clean), ("again", broken))}
    assert clips["again"] == clips["unbroken"] and len(clips["unbroken"]) == len(unbroken)

    # Kafka: every alert, and a repeat only as the very same message under the same key.
    by_number = defaultdict(set)
    for message in read_all(kafka, kafka.alerts_topic):
        by_number[int(message.key)].add(message.value)
    assert sorted(by_number) == [row["number"] for row in unbroken]
    assert all(len(values) == 1 for values in by_number.values())
    # The webhook: every alert its rules send, a repeat only under the same idempotency key.
    later = hook.requests[sent_unbroken:]
    keys = {r["body"]["number"]: r["headers"]["Idempotency-Key"] for r in later}
    assert sorted(keys) == sorted(row["number"] for row in unbroken if row["rule"] != "car-seen")
    assert all(r["headers"]["Idempotency-Key"] == keys[r["body"]["number"]] for r in later)
    hook.close()


def test_an_alerts_run_killed_while_mqtt_is_stopped_publishes_each_alert_once_when_run_again(
        tmp_path, kafka, services):
    """Mosquitto stopped (SIGSTOP) under an alerts run: past Kafka, the run waits on MQTT's login and is
    SIGKILLed there, none of its alerts recorded as published. Mosquitto goes on, the run again publishes
    every alert on MQTT once (with its source's retained last alert); Kafka has each, a repeat only ever
    the same message."""
    import signal
    import time

    from imgpipeline.defs.alerts.ledger import Ledger
    from imgpipeline.resources.settings import env_name
    from imgpipeline.vision.alert_rules import MQTT_RECORD
    from imgpipeline_tests.pipeline import wait_for
    from imgpipeline_tests.test_defs.test_alerts.scene import RANGE as SCENE
    from imgpipeline_tests.test_defs.test_alerts.test_alerts import Subscriber, publishing

    prefix, mqtt, storage, resources = publishing(tmp_path, kafka, services)
    records(storage.open())
    with fresh_instance() as instance:
        assert dg.materialize([hourly_tables], instance=instance, resources=resources,
                              tags={"dagster/asset_partition_range_start": SCENE[0],
                                    "dagster/asset_partition_range_end": SCENE[1]}).success
    env = {**os.environ, "IMGPIPELINE_STORAGE_URI": storage.uri,
           "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic,
           "IMGPIPELINE_ALERTS_TOPIC": kafka.alerts_topic,
           "IMGPIPELINE_ZONES_FILE": str(tmp_path / "zones.yaml"),
           "IMGPIPELINE_ALERTS_FILE": str(tmp_path / "alerts.yaml"),
           env_name(MqttSettings, "broker"): mqtt.broker, env_name(MqttSettings, "publish_prefix"): prefix,
           "IMGPIPELINE_HOME": str(tmp_path), "DAGSTER_HOME": bare_home(tmp_path / "dagster")}
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "imgpipeline.definitions",
               "--select", "alerts", "--partition-range", "...".join(SCENE)]
    broker = services.mqtt.pid
    os.kill(broker, signal.SIGSTOP)
    try:
        run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        # The first hour's alerts on Kafka: next the run logs in to MQTT, which waits 10 s for an answer.
        wait_for(lambda: read_all(kafka, kafka.alerts_topic) or run.poll() is not None, 180,
                 "the first alerts on Kafka")
        assert run.poll() is None, "the run ended before it was killed"
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    finally:
        os.kill(broker, signal.SIGCONT)
    ledger = Ledger(storage.open())
    first = sorted({int(m.key) for m in read_all(kafka, kafka.alerts_topic)})
    assert first and all(ledger.sent(number, MQTT_RECORD) is None for number in first)

    live = Subscriber(mqtt, [f"{prefix}/alerts", f"{prefix}/+/alert"])
    try:
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        stored = stored_alerts(storage)
        wait_for(lambda: len(live.on(f"{prefix}/alerts")) >= len(stored), 30, "the alerts on MQTT")
        time.sleep(1)  # scenario: a second for any message sent twice to arrive too
    finally:
        live.close()
    published = sorted(json.loads(m)["number"] for m in live.on(f"{prefix}/alerts"))
    assert published == [row["number"] for row in stored]
    last = {}
    for row in stored:
        last[row["source_id"]] = row["number"]
    assert {source: json.loads(live.on(f"{prefix}/{source}/alert")[-1])["number"] for source in last} == last
    assert all(ledger.sent(row["number"], MQTT_RECORD) is not None for row in stored)
    by_number = defaultdict(set)
    for message in read_all(kafka, kafka.alerts_topic):
        by_number[int(message.key)].add(message.value)
    assert sorted(by_number) == [row["number"] for row in stored]
    assert all(len(values) == 1 for values in by_number.values())
