"""Messages that name no source, sent through a raw Kafka client (no key, a binary key, a key of a
megabyte, a key that is no source id, a source id off the contract or claiming the stand-ins' prefix):
each lands as an error record under a stand-in source id of the contract and a dead letter with its
reason; the hourly tables, the alerts, a backtest and a comparison of that hour and the hours beside it
take them (and a record of no source at all, as earlier versions landed them) without taking them for
cameras."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from imgpipeline.cli.samples import sample
from imgpipeline.defs.alerts.assets import alerts
from imgpipeline.defs.laboratory import history
from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.defs.tables import ALERTS, FRAMES
from imgpipeline.defs.warehouse.assets import hourly_tables
from imgpipeline.ingest.messages import (
    FRAME_ID,
    FrameMessage,
    frame_key,
    iso_utc,
    sha256_hex,
    stand_in_source,
)
from imgpipeline.resources import AlertsResource, DetectorResource, StorageResource, TrackingResource
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import drain, landing_records
from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all
from imgpipeline_tests.test_defs.test_tracking.test_tracking import land, materialize

pytestmark = [pytest.mark.integration, pytest.mark.instance, pytest.mark.edge]

RULES = "rules: [{name: gone-quiet, kind: silent, minutes: 10}]"


def camera_frame(store, name: str, captured: datetime) -> bytes:
    """A frame message of camera cam9, its image in storage."""
    data = sample("zidane.jpg").read_bytes()
    key = frame_key("cam9", captured, name)
    store.put(key, data)
    message = FrameMessage(name, "cam9", iso_utc(captured), store.uri(key), sha256_hex(data), None, None)
    return message.to_json()


def claiming(source_id: str) -> bytes:
    return json.dumps({"schema": 1, "frame_id": "f1", "source_id": source_id,
                       "captured_at": "2026-11-20T10:00:00Z", "uri": "file:///nowhere/f1.jpg"}).encode()


def test_messages_that_name_no_source_land_under_stand_ins_and_fire_nothing(kafka, tmp_path):
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    store = storage.open()
    (tmp_path / "alerts.yaml").write_text(RULES)
    resources = {"storage": storage, "kafka": kafka, "tracking": TrackingResource(zones_file="none"),
                 "alert_rules": AlertsResource(alerts_file=str(tmp_path / "alerts.yaml"))}
    # The broker stamps each message as it takes it: what names no source is recorded at about `now`,
    # between the camera's two frames forty minutes apart (a silence of the camera's own).
    now = datetime.now(UTC)
    sent = [
        (b"cam9", camera_frame(store, "a", now - timedelta(minutes=20))),
        (None, b"{not json"),
        (b"\xff\xfe\x00\x81", b"\x00\x01 no frame"),
        (b"k" * 1_000_000, b"{}"),
        (b"camera #1 / lobby", b"[]"),
        (b"cam9", claiming("../../etc")),
        (b"cam9", claiming(stand_in_source(None))),
        (b"cam9", camera_frame(store, "b", now + timedelta(minutes=20))),
    ]
    producer = kafka.producer()
    for key, value in sent:
        producer.send(kafka.frames_topic, key=key, value=value, partition=0)
    producer.flush()
    producer.close()
    # A record of no source at all, as earlier versions landed a message sent without a key.
    land(store, [LandingRecord(schema=None, frame_id="frames-0-900", source_id=None, status="error",
                               captured_at=iso_utc(now + timedelta(minutes=1)), error="malformed JSON")],
         "uris-0000000000000000")

    with fresh_instance() as instance:
        drain(kafka, storage, instance, detector=DetectorResource(engine="noop"))
        records = {r.offset: r for r in landing_records(storage) if r.topic == kafka.frames_topic}
        hostile = range(1, len(sent) - 1)
        assert [records[o].status for o in (0, len(sent) - 1)] == ["detected", "detected"]
        for offset in hostile:
            record = records[offset]
            assert (record.status, record.schema) == ("error", None), record
            assert record.source_id == stand_in_source(sent[offset][0]), repr(record.source_id)[:200]
            assert FRAME_ID.match(record.source_id)
        letters = {m["offset"]: m for m in (json.loads(r.value) for r in read_all(kafka, kafka.dlq_topic))}
        assert sorted(letters) == list(hostile) and all(m["reason"] for m in letters.values())
        assert "reserved" in letters[6]["reason"]
        assert letters[3]["key"] == {"bytes": 1_000_000, "sha256": sha256_hex(b"k" * 1_000_000)}

        # Their hours and the hours beside them: tables built, alerts raised, for the camera only.
        hours = sorted({r.event_hour for r in records.values()})
        span = [hours[0] - timedelta(hours=1), hours[-1] + timedelta(hours=1)]
        materialize([hourly_tables], *(h.strftime("%Y-%m-%d-%H:%M") for h in span), resources, instance)
        materialize([alerts], *(h.strftime("%Y-%m-%d-%H:%M") for h in span), resources, instance)
    every = [span[0] + timedelta(hours=n) for n in range(len(hours) + 2)]
    sources = set(FRAMES.stored_hours(store, every, ["source_id"]).column("source_id").to_pylist())
    assert sources == {"cam9", None, *(records[o].source_id for o in hostile)}
    raised = ALERTS.stored_hours(store, every, ["rule", "source_id", "frame_id"]).to_pylist()
    assert raised == [{"rule": "gone-quiet", "source_id": "cam9", "frame_id": "a"}]

    # A backtest and a comparison of the hours answer, and agree with the hourly alerts.
    rules, zones = resources["alert_rules"].rules(), resources["tracking"].zones()
    backtest = history.backtest_range(store, hours, rules, zones, "noop")
    assert sum(c["alerts"] for c in backtest["counts"]) == 1
    assert [e["source_id"] for e in backtest["evidence"]] == ["cam9"]
    compared = history.compare_hours(store, hours, "noop", "noop", rules, zones)
    assert compared["alerts"] == [{"rule": "gone-quiet", "alerts": [1, 1]}]
