"""No payload stops the MQTT bridge (real Mosquitto, real Kafka): each hostile message is forwarded for its
run to dead-letter, or dead-lettered by the bridge itself, acknowledged, and the bridge goes on; after a
reconnect a packet id of the new connection never acknowledges a message of the old one."""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest

from imgpipeline.cli.bridge import mqtt_letter
from imgpipeline.ingest.messages import sha256_hex
from imgpipeline.ingest.mqtt import MqttBridge
from imgpipeline.resources import DetectorResource, StorageResource
from imgpipeline.resources.mqtt import MqttSettings
from imgpipeline.resources.settings import env_name
from imgpipeline.services import Mosquitto
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import drain, landing_records
from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all
from imgpipeline_tests.test_ingest.test_mqtt import images, publish, publisher

pytestmark = [pytest.mark.integration, pytest.mark.instance, pytest.mark.edge]
LIMIT = 50_000


def dds_header(pixel_format: bytes = b"XXXX") -> bytes:
    """128 bytes: a DDS header whose compressed pixel format no reader knows."""
    header = bytearray(128)
    header[:4] = b"DDS "
    struct.pack_into("<7I", header, 4, 124, 0x1007, 64, 64, 0, 0, 0)
    struct.pack_into("<2I4s", header, 76, 32, 0x4, pixel_format)
    return bytes(header)


def spider_header() -> bytes:
    """128 bytes: a SPIDER header (27 big-endian floats) with an infinite stack field."""
    fields = [0.0] * 27
    fields[0], fields[1], fields[4], fields[11], fields[12] = 1, 48, 1, 64, 4
    fields[21], fields[22], fields[23] = 1024, 256, float("inf")
    return struct.pack(">27f", *fields) + bytes(20)


def test_no_payload_stops_the_bridge(mqtt, kafka, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv(env_name(MqttSettings, "max_payload_bytes"), str(LIMIT))
    settings = MqttSettings.from_env(broker=mqtt.broker)
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    said: list[str] = []
    bridge = MqttBridge(kafka, storage, ["cameras/+/frames"], letter=mqtt_letter, client_id="bridge-hostile",
                        settings=settings, log=said.append)
    bridge.run(idle_s=0.5)  # the persistent session subscribes; what follows waits in it
    forwarded = {"dds": dds_header(), "spider": spider_header(), "random": os.urandom(128), "empty": b"",
                 "photo": images(1, "ok")[0]}
    camera = publisher(mqtt)
    publish(camera, "cameras/gate/frames", list(forwarded.values())[:-1])
    too_large = os.urandom(LIMIT + 1)
    publish(camera, "cameras/gate/frames", [too_large])
    publish(camera, "cameras/-gate/frames", images(1, "x"))  # a topic level that is no source id
    publish(camera, "cameras/gate/frames", [forwarded["photo"]])
    camera.loop_stop()

    assert bridge.run(limit=7, idle_s=20) == 7, said  # each acknowledged, the bridge still running
    assert bridge.run(idle_s=1) == 0, said  # nothing comes again: no message loops in the session

    frames = [json.loads(m.value) for m in read_all(kafka, kafka.frames_topic)]
    wanted = sorted(f"gate-{sha256_hex(p)[:20]}" for p in forwarded.values())
    assert sorted(m["frame_id"] for m in frames) == wanted
    letters = {(m["topic"], m["value_bytes"]): m
               for m in (json.loads(r.value) for r in read_all(kafka, kafka.dlq_topic))}
    small = len(images(1, "x")[0])
    assert sorted(letters) == [("cameras/-gate/frames", small), ("cameras/gate/frames", LIMIT + 1)]
    over = letters["cameras/gate/frames", LIMIT + 1]
    assert f"over the bridge's limit (IMGPIPELINE_MQTT_MAX_PAYLOAD_BYTES={LIMIT})" in over["reason"]
    assert over["value_sha256"] == sha256_hex(too_large) and over["partition"] == over["offset"] == -1
    assert "'-gate' is not a source id" in letters["cameras/-gate/frames", small]["reason"]
    assert all(p.stat().st_size <= LIMIT for p in (tmp_path / "store").rglob("*") if p.is_file())

    # The run dead-letters what the bridge forwarded and cannot be decoded, with the reason.
    with fresh_instance() as instance:
        drain(kafka, storage, instance, detector=DetectorResource(engine="noop"))
    status = {r.frame_id: (r.status, r.error or "") for r in landing_records(storage)}
    by_name = {name: status[f"gate-{sha256_hex(p)[:20]}"] for name, p in forwarded.items()}
    assert by_name["photo"][0] == "detected"
    assert {name: s for name, (s, _) in by_name.items() if name != "photo"} == {
        "dds": "error", "spider": "error", "random": "error", "empty": "error"}
    run_letters = [m for m in (json.loads(r.value) for r in read_all(kafka, kafka.dlq_topic))
                   if m["topic"] == kafka.frames_topic]
    assert len(run_letters) == 4 and all(m["reason"] for m in run_letters)


def test_after_a_reconnect_a_reused_packet_id_never_acknowledges_an_old_message(kafka, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    broker = Mosquitto(tmp_path / "mqtt")
    broker.start()
    try:
        settings = MqttSettings(broker=broker.address(broker.ports))
        storage = StorageResource(uri=(tmp_path / "store").as_uri())
        bridge = MqttBridge(kafka, storage, ["gate/+/f"], letter=mqtt_letter, client_id="bridge-reconnect",
                            settings=settings, log=lambda line: None)
        bridge.run(idle_s=0.5)  # the persistent session subscribes
        old, new = images(2, "r")
        camera = publisher(settings)
        publish(camera, "gate/cam-r/f", [old])
        camera.loop_stop()
        camera.disconnect()

        # A connection of the bridge takes the old message and holds it, as while Kafka is slow.
        bridge.settled.clear()
        client = bridge._client()
        settings.connect(client)
        client.loop_start()
        assert bridge.settled.wait(30)
        first = bridge.inbox.get(timeout=30)
        assert first.payload == old

        # The broker comes back without its state (another node, a lost disk): the client connects again
        # to a new session, whose first message gets the same packet id as the old one had.
        bridge.settled.clear()
        broker.stop()
        for path in (tmp_path / "mqtt" / "data").iterdir():
            path.unlink() if path.is_file() else shutil.rmtree(path)
        broker.start()
        assert bridge.settled.wait(60), "the bridge did not subscribe again"
        camera = publisher(settings)
        publish(camera, "gate/cam-r/f", [new])
        camera.loop_stop()
        camera.disconnect()
        second = bridge.inbox.get(timeout=30)
        assert second.payload == new and second.mid == first.mid

        bridge._forward(client, [first])  # the old message's acknowledgement must not reach the new one
        client.loop_stop()
        client.disconnect()
        for producer in bridge.producers.values():
            producer.close()

        # Not acknowledged, the new message comes again to the next connection and reaches Kafka.
        bridge.run(idle_s=3)
        on_kafka = {json.loads(m.value)["frame_id"] for m in read_all(kafka, kafka.frames_topic)}
        assert f"cam-r-{sha256_hex(new)[:20]}" in on_kafka
    finally:
        broker.stop()
