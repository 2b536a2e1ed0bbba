"""Alerts and cameras on MQTT, and in Home Assistant: with a publish prefix set (resources/mqtt.py), each
alert goes to `<prefix>/alerts` (QoS 1, once: recorded in the alerts ledger as `mqtt`, beside Kafka and the
webhooks) and, retained, to `<prefix>/<source>/alert`; as the fast lane lands frames, each camera's latest
frame goes, retained, to `<prefix>/<source>/snapshot` (the JPEG), and what it shows to
`<prefix>/<source>/state`: its objects per class, those in each of its zones, and each line's crossings
of the day (the hours the hourly build counted from object_counts, the others as the live alerts counted
them). Home Assistant's MQTT discovery (`homeassistant/<component>/imgpipeline_<source>/<object>/config`,
retained) makes each camera a device with its last alert (a sensor, the alert's fields as attributes),
the objects it sees now (a sensor, per class as attributes), its snapshot (an image), and a sensor per
zone (objects in it now) and per line (crossings today), with nothing to configure there.
"""

from __future__ import annotations

import json
import re
import threading
import time

from imgpipeline import ConfigError
from imgpipeline.defs.alerts.ledger import Ledger
from imgpipeline.defs.alerts.notify import readable
from imgpipeline.defs.alerts.watches import saved_sources, state_key
from imgpipeline.defs.records.listeners import LandedRange
from imgpipeline.defs.tables import OBJECT_COUNTS, counts_part
from imgpipeline.ingest.messages import parse_time
from imgpipeline.resources.mqtt import MqttSettings
from imgpipeline.resources.storage import Storage
from imgpipeline.vision import counting
from imgpipeline.vision.alert_rules import MQTT_RECORD
from imgpipeline.vision.zones import SourceZones, Zones, no_zones

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


def announce(publisher: Publisher, source: str, spec: SourceZones | None = None) -> None:
    """Home Assistant's discovery of a camera (retained: Home Assistant reads it whenever it starts)."""
    for component, name, config in discovery(publisher.prefix, source, spec or SourceZones()):
        publisher.send(f"{DISCOVERY}/{component}/{object_id(source)}/{name}/config",
                       json.dumps(config).encode(), retain=True)


def object_id(source: str) -> str:
    """A source id as Home Assistant names objects ([a-zA-Z0-9_-]: source ids may hold dots)."""
    return "imgpipeline_" + source.replace(".", "_")


def discovery(prefix: str, source: str, spec: SourceZones) -> list[tuple[str, str, dict]]:
    """(component, object, config) of a camera's entities: its last alert, its objects now, its snapshot,
    and per zone of the zones file the objects in it now, per line the crossings today."""
    device = {"identifiers": [object_id(source)], "name": f"{source} (imgpipeline)",
              "manufacturer": "imgpipeline", "model": "camera"}
    state = f"{prefix}/{source}/state"
    alert = {"name": "Last alert", "unique_id": f"{object_id(source)}_last_alert", "device": device,
             "state_topic": f"{prefix}/{source}/alert", "value_template": "{{ value_json.rule }}",
             "json_attributes_topic": f"{prefix}/{source}/alert", "icon": "mdi:alert"}
    objects = {"name": "Objects", "unique_id": f"{object_id(source)}_objects", "device": device,
               "state_topic": state, "value_template": "{{ value_json.total }}",
               "json_attributes_topic": state,
               "json_attributes_template": "{{ value_json.objects | tojson }}", "state_class": "measurement",
               "icon": "mdi:eye"}
    snapshot = {"name": "Snapshot", "unique_id": f"{object_id(source)}_snapshot", "device": device,
                "image_topic": f"{prefix}/{source}/snapshot", "content_type": "image/jpeg"}
    found = [("sensor", "last_alert", alert), ("sensor", "objects", objects), ("image", "snapshot", snapshot)]
    for zone in spec.zones:
        name, of = f"zone_{entity_name(zone.name)}", f"value_json.zones[{json.dumps(zone.name)}]"
        found.append(("sensor", name, {
            "name": f"Objects in {zone.name}", "unique_id": f"{object_id(source)}_{name}", "device": device,
            "state_topic": state, "value_template": f"{{{{ {of}.total }}}}", "json_attributes_topic": state,
            "json_attributes_template": f"{{{{ {of}.objects | tojson }}}}", "state_class": "measurement",
            "icon": "mdi:vector-square"}))
    for line in spec.lines:
        name, of = f"line_{entity_name(line.name)}", f"value_json.lines[{json.dumps(line.name)}]"
        found.append(("sensor", name, {
            "name": f"Crossings of {line.name} today", "unique_id": f"{object_id(source)}_{name}",
            "device": device, "state_topic": state, "value_template": f"{{{{ {of}.total }}}}",
            "json_attributes_topic": state, "json_attributes_template": f"{{{{ {of} | tojson }}}}",
            "state_class": "total", "icon": "mdi:transit-transfer"}))
    return found


def entity_name(name: str) -> str:
    """A zone's or line's name as a discovery object id ([a-zA-Z0-9_-])."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


class CameraSnapshots:
    """As the fast lane lands a range: each camera's latest frame of it, retained on its snapshot topic, and
    what it shows on its state topic (objects per class, per zone, and the day's crossings per line)."""

    def __init__(self):
        self.announced: dict[str, str | None] = {}  # cameras whose discovery this run published: zones sha
        self.away_until = 0.0  # the broker failed: ranges until then publish nothing (a state, not a record)
        self.counted = CountedHours()

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
        tracking = getattr(landed.context.resources, "tracking", None)
        zones = tracking.zones() if tracking is not None else no_zones()
        live = live_crossings(landed)
        days = {source: parse_time(record.captured_at).date() for source, record in latest.items()}
        self.counted.look(landed.store, days.values(), zones)
        with Publisher(settings) as publisher:
            for source, record in sorted(latest.items()):
                if self.announced.get(source, "") != zones.sha256:
                    announce(publisher, source, zones.of(source))
                    self.announced[source] = zones.sha256
                crossings = self.counted.day(source, days[source], live.get(source, {}))
                publisher.send(f"{publisher.prefix}/{source}/state",
                               json.dumps(state_of(record, zones, crossings, days[source])).encode(),
                               retain=True)
                if (image := readable(landed.store, record.uri, landed.max_frame_bytes)) is not None:
                    publisher.send(f"{publisher.prefix}/{source}/snapshot", image, retain=True)


def state_of(record, zones: Zones | None = None, crossings: dict | None = None, day=None) -> dict:
    """What a camera's latest frame shows: its objects per class, and when it was captured; with the zones
    file, the objects in each of its zones and each line's crossings on `day` (`crossings`, per line and
    class [in, out])."""
    zones = zones or no_zones()
    seen = [(d.get("class_name") or str(d.get("class_id")), tuple(d["box"])) for d in record.detections]
    objects: dict[str, int] = {}
    for name, _ in seen:
        objects[name] = objects.get(name, 0) + 1
    state = {"source_id": record.source_id, "frame_id": record.frame_id, "captured_at": record.captured_at,
             "total": sum(objects.values()), "objects": dict(sorted(objects.items()))}
    spec = zones.of(record.source_id)
    if spec.zones:
        inside = counting.in_zones(zones, record.source_id, record.width or 0, record.height or 0, seen)
        state["zones"] = {z.name: {"total": sum(inside.get(z.name, {}).values()),
                                   "objects": dict(sorted(inside.get(z.name, {}).items()))}
                          for z in spec.zones}
    if spec.lines:
        counted = crossings or {}
        state["lines"] = {line.name: line_state(counted.get(line.name, {}), day) for line in spec.lines}
    return state


def line_state(classes: dict[str, list[int]], day) -> dict:
    ways = {c: {"in": n[0], "out": n[1]} for c, n in sorted(classes.items())}
    crossed_in, crossed_out = sum(n[0] for n in classes.values()), sum(n[1] for n in classes.values())
    return {"day": str(day), "total": crossed_in + crossed_out, "in": crossed_in, "out": crossed_out,
            "classes": ways}


def live_crossings(landed: LandedRange) -> dict[str, dict[str, dict]]:
    """Per source of the range's partition, its crossings the live alerts counted per hour (their saved
    watch, saved before this listener is told); none where no track rule watches."""
    key = state_key(landed.topic, landed.partition, landed.generation)
    saved = saved_sources(landed.store, key)
    return {source: tracks.get("crossed") or {} for source, tracks in saved.items()}


class CountedHours:
    """A day's crossings per source, line and class: the hours the hourly build counted (object_counts with
    the zones file in use, each file read once per version) and, for the hours it has not, those the live
    alerts counted."""

    def __init__(self):
        # object_counts key → (its version, source → line → class → [in, out])
        self.read: dict[str, tuple[str, dict]] = {}
        self.built: dict[str, str] = {}  # the files of the days last looked at, with their versions

    def look(self, store: Storage, days, zones: Zones) -> None:
        """Read the object_counts of those days written since the last look (one listing a day)."""
        part, self.built = f"/{counts_part(zones.sha256)}.parquet", {}
        for day in sorted(set(days)):
            folder = f"{OBJECT_COUNTS.folder}dt={day.isoformat()}/"
            for key, tag in store.versions(folder).items():
                if key.endswith(part):
                    self.built[key] = tag
                    if self.read.get(key, ("",))[0] != tag:
                        self.read[key] = tag, lines_of(OBJECT_COUNTS.read(store, key, COUNTED))
        self.read = {key: held for key, held in self.read.items() if key in self.built}

    def day(self, source: str, day, live: dict) -> dict[str, dict[str, list[int]]]:
        """The source's crossings on a day looked at (`look`), per line and class: [in, out]."""
        total: dict[str, dict[str, list[int]]] = {}
        hours_built = set()
        for key in sorted(k for k in self.built if f"/dt={day.isoformat()}/" in k):
            hours_built.add(key.split("/hour=")[1][:2])
            add(total, self.read[key][1].get(source, {}))
        for hour, lines in live.items():
            if hour.startswith(day.isoformat()) and hour[11:13] not in hours_built:
                add(total, lines)
        return total


COUNTED = ["source_id", "kind", "name", "class_name", "crossed_in", "crossed_out"]


def lines_of(table) -> dict:
    found: dict = {}
    for row in table.to_pylist():
        if row["kind"] == "line" and (row["crossed_in"] or row["crossed_out"]):
            ways = found.setdefault(row["source_id"], {}).setdefault(row["name"], {}).setdefault(
                row["class_name"], [0, 0])
            ways[0] += row["crossed_in"] or 0
            ways[1] += row["crossed_out"] or 0
    return found


def add(total: dict, lines: dict) -> None:
    for line, classes in lines.items():
        for class_name, (crossed_in, crossed_out) in classes.items():
            ways = total.setdefault(line, {}).setdefault(class_name, [0, 0])
            ways[0] += crossed_in
            ways[1] += crossed_out
