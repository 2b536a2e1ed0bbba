"""Alerts and cameras on MQTT, and in Home Assistant: with a publish prefix set (resources/mqtt.py), each
alert goes to `<prefix>/alerts` (QoS 1, once: recorded in the alerts ledger as `mqtt`, beside Kafka and the
webhooks) and, retained, to `<prefix>/<source>/alert`; as the fast lane lands frames, each camera's latest
frame goes, retained, to `<prefix>/<source>/snapshot` (the JPEG), and what it shows to
`<prefix>/<source>/state` (the objects in it per class). Home Assistant's MQTT discovery
(`homeassistant/<component>/imgpipeline_<source>/<object>/config`, retained) makes each camera a device
with three entities, its last alert (a sensor, the alert's fields as attributes), the objects it sees now
(a sensor, per class as attributes) and its snapshot (an image), with nothing to configure there.
"""

from __future__ import annotations

import json
import threading
import time

from imgpipeline import ConfigError
from imgpipeline.defs.alerts.ledger import Ledger
from imgpipeline.defs.alerts.notify import readable
from imgpipeline.defs.records.listeners import LandedRange
from imgpipeline.resources.mqtt import MqttSettings
from imgpipeline.vision.alert_rules import MQTT_RECORD

DISCOVERY = "homeassistant"
PUBLISH_TIMEOUT_S = 10.0
AWAY_S = 30.0  # after the broker failed, the cameras' state waits this long (each range would wait on it)


class Publisher:
    """One connection to the broker for a batch of messages, each acknowledged (QoS 1) before the next."""

    def __init__(self, settings: MqttSettings):
        self.settings, self.prefix = settings, settings.publish_prefix

    def __enter__(self) -> Publisher:
        answered, said = threading.Event(), []

        def on_connect(client, userdata, flags, reason_code, properties):
            said.append(reason_code)
            answered.set()

        self.client = self.settings.client()
        self.client.on_connect = on_connect
        self.settings.connect(self.client)
        self.client.loop_start()
        if not answered.wait(PUBLISH_TIMEOUT_S) or said[0].is_failure:
            self.__exit__()
            raise ConfigError(self.settings.refusal(said[0]) if said else
                              f"the MQTT broker at {self.settings.broker} did not answer the login within "
                              f"{PUBLISH_TIMEOUT_S:g} s")
        return self

    def __exit__(self, *exc) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        try:
            info = self.client.publish(topic, payload, qos=1, retain=retain)
            info.wait_for_publish(timeout=PUBLISH_TIMEOUT_S)
        except (RuntimeError, ValueError) as exc:  # the connection lost, the client's queue full
            raise OSError(f"the MQTT broker at {self.settings.broker}: {exc}") from None
        if not info.is_published():
            raise OSError(f"the MQTT broker at {self.settings.broker} did not acknowledge {topic} within "
                          f"{PUBLISH_TIMEOUT_S:g} s")


def publish_alerts(settings: MqttSettings | None, ledger: Ledger, messages: list[dict], log) -> int:
    """Alerts not yet on MQTT go there (and each one's source's last alert, retained, with its camera's
    discovery); each recorded once the broker acknowledged it. How many were sent. A broker away or
    refusing is a warning (`log`), not a failure: what was not sent goes with the next alerts run (the
    ledger says which), and Kafka and the webhooks are told meanwhile."""
    if settings is None or not settings.publish_prefix:
        return 0
    waiting = [m for m in messages if ledger.sent(m["number"], MQTT_RECORD) is None]
    sent = 0
    try:
        if waiting:
            with Publisher(settings) as publisher:
                for source in sorted({m["source_id"] for m in waiting}):
                    announce(publisher, source)
                for message in waiting:
                    body = json.dumps(message).encode()
                    publisher.send(f"{publisher.prefix}/alerts", body)
                    publisher.send(f"{publisher.prefix}/{message['source_id']}/alert", body, retain=True)
                    ledger.record_sent(message["number"], MQTT_RECORD, "delivered")
                    sent += 1
    except (ConfigError, OSError) as exc:
        log(f"MQTT: {len(waiting) - sent} alerts not published ({exc}); the next alerts run sends them")
    return sent


def announce(publisher: Publisher, source: str) -> None:
    """Home Assistant's discovery of a camera (retained: Home Assistant reads it whenever it starts)."""
    for component, name, config in discovery(publisher.prefix, source):
        publisher.send(f"{DISCOVERY}/{component}/{object_id(source)}/{name}/config",
                       json.dumps(config).encode(), retain=True)


def object_id(source: str) -> str:
    """A source id as Home Assistant names objects ([a-zA-Z0-9_-]: source ids may hold dots)."""
    return "imgpipeline_" + source.replace(".", "_")


def discovery(prefix: str, source: str) -> list[tuple[str, str, dict]]:
    """(component, object, config) of a camera's entities: its last alert, its objects now, its snapshot."""
    device = {"identifiers": [object_id(source)], "name": f"{source} (imgpipeline)",
              "manufacturer": "imgpipeline", "model": "camera"}
    alert = {"name": "Last alert", "unique_id": f"{object_id(source)}_last_alert", "device": device,
             "state_topic": f"{prefix}/{source}/alert", "value_template": "{{ value_json.rule }}",
             "json_attributes_topic": f"{prefix}/{source}/alert", "icon": "mdi:alert"}
    objects = {"name": "Objects", "unique_id": f"{object_id(source)}_objects", "device": device,
               "state_topic": f"{prefix}/{source}/state", "value_template": "{{ value_json.total }}",
               "json_attributes_topic": f"{prefix}/{source}/state",
               "json_attributes_template": "{{ value_json.objects | tojson }}", "state_class": "measurement",
               "icon": "mdi:eye"}
    snapshot = {"name": "Snapshot", "unique_id": f"{object_id(source)}_snapshot", "device": device,
                "image_topic": f"{prefix}/{source}/snapshot", "content_type": "image/jpeg"}
    return [("sensor", "last_alert", alert), ("sensor", "objects", objects), ("image", "snapshot", snapshot)]


class CameraSnapshots:
    """As the fast lane lands a range: each camera's latest frame of it, retained on its snapshot topic, and
    the objects detected in it on its state topic."""

    def __init__(self):
        self.announced: set[str] = set()  # cameras whose discovery this run published
        self.away_until = 0.0  # the broker failed: ranges until then publish nothing (a state, not a record)

    def __call__(self, landed: LandedRange) -> None:
        settings = getattr(landed.context.resources, "mqtt", None)
        if settings is None or not settings.publish_prefix or time.monotonic() < self.away_until:
            return
        try:
            self.publish(landed, settings)
        except (ConfigError, OSError) as exc:
            self.away_until = time.monotonic() + AWAY_S
            landed.context.log.warning(f"MQTT: cameras' snapshots not published ({exc}); tried again in "
                                       f"{AWAY_S:g} s")

    def publish(self, landed: LandedRange, settings: MqttSettings) -> None:
        latest: dict[str, object] = {}
        for record in landed.records():
            before = latest.get(record.source_id)
            if record.uri and record.status != "error" and (before is None
                                                             or record.captured_at >= before.captured_at):
                latest[record.source_id] = record
        if not latest:
            return
        with Publisher(settings) as publisher:
            for source, record in sorted(latest.items()):
                if source not in self.announced:
                    announce(publisher, source)
                    self.announced.add(source)
                publisher.send(f"{publisher.prefix}/{source}/state", json.dumps(state_of(record)).encode(),
                               retain=True)
                if (image := readable(landed.store, record.uri, landed.max_frame_bytes)) is not None:
                    publisher.send(f"{publisher.prefix}/{source}/snapshot", image, retain=True)


def state_of(record) -> dict:
    """What a camera's latest frame shows: its objects per class, and when it was captured."""
    objects: dict[str, int] = {}
    for detection in record.detections:
        name = detection.get("class_name") or str(detection.get("class_id"))
        objects[name] = objects.get(name, 0) + 1
    return {"source_id": record.source_id, "frame_id": record.frame_id, "captured_at": record.captured_at,
            "total": sum(objects.values()), "objects": dict(sorted(objects.items()))}

