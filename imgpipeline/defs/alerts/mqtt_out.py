"""Alerts and cameras on MQTT, and in Home Assistant: with a publish prefix set (resources/mqtt.py), each
alert goes to `<prefix>/alerts` (QoS 1, once: recorded in the alerts ledger as `mqtt`, beside Kafka and the
webhooks) and, retained, to `<prefix>/<source>/alert`; as the fast lane lands frames, each camera's latest
frame goes, retained, to `<prefix>/<source>/snapshot` (the JPEG). Home Assistant's MQTT discovery
(`homeassistant/<component>/imgpipeline_<source>/<object>/config`, retained) makes each camera a device
with two entities, its last alert (a sensor, the alert's fields as attributes) and its snapshot (an image),
with nothing to configure there.
"""

from __future__ import annotations

import json

from imgpipeline import ConfigError
from imgpipeline.defs.alerts.ledger import Ledger
from imgpipeline.defs.records.listeners import LandedRange
from imgpipeline.resources.mqtt import MqttSettings
from imgpipeline.resources.storage import BadObject, Storage
from imgpipeline.vision.alert_rules import MQTT_RECORD

DISCOVERY = "homeassistant"
PUBLISH_TIMEOUT_S = 10.0


class Publisher:
    """One connection to the broker for a batch of messages, each acknowledged (QoS 1) before the next."""

    def __init__(self, settings: MqttSettings):
        self.settings, self.prefix = settings, settings.publish_prefix

    def __enter__(self) -> Publisher:
        self.client = self.settings.client()
        self.settings.connect(self.client)
        self.client.loop_start()
        return self

    def __exit__(self, *exc) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=PUBLISH_TIMEOUT_S)
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
    """(component, object, config) of a camera's entities: its last alert and its snapshot."""
    device = {"identifiers": [object_id(source)], "name": f"{source} (imgpipeline)",
              "manufacturer": "imgpipeline", "model": "camera"}
    alert = {"name": "Last alert", "unique_id": f"{object_id(source)}_last_alert", "device": device,
             "state_topic": f"{prefix}/{source}/alert", "value_template": "{{ value_json.rule }}",
             "json_attributes_topic": f"{prefix}/{source}/alert", "icon": "mdi:alert"}
    snapshot = {"name": "Snapshot", "unique_id": f"{object_id(source)}_snapshot", "device": device,
                "image_topic": f"{prefix}/{source}/snapshot", "content_type": "image/jpeg"}
    return [("sensor", "last_alert", alert), ("image", "snapshot", snapshot)]


class CameraSnapshots:
    """As the fast lane lands a range: each camera's latest frame of it, retained on its snapshot topic."""

    def __init__(self):
        self.announced: set[str] = set()  # cameras whose discovery this run published

    def __call__(self, landed: LandedRange) -> None:
        settings = getattr(landed.context.resources, "mqtt", None)
        if settings is None or not settings.publish_prefix:
            return
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
                image = frame_bytes(landed.store, record.uri, landed.max_frame_bytes)
                if image is None:
                    continue
                if source not in self.announced:
                    announce(publisher, source)
                    self.announced.add(source)
                publisher.send(f"{publisher.prefix}/{source}/snapshot", image, retain=True)


def frame_bytes(store: Storage, uri: str, max_bytes: int) -> bytes | None:
    try:
        return store.get(store.key_for(uri), max_bytes=max_bytes)
    except (BadObject, OSError):
        return None
