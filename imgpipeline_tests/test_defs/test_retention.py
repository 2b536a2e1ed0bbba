"""Retention: what is past its keeping time goes, by the day in its key (on S3 too, past a console's
folder object); what is not (recent days, alerts' evidence, stray keys, landing of hours without
tables) stays; the warehouse keeps its rows and a retired day's tables are never rebuilt from what is
left; a sweep SIGKILLed midway is finished by the next with the same record; the dead letters'
retention is set on the broker; the S3 lifecycle rules are ones an S3 endpoint takes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from imgpipeline import ConfigError
from imgpipeline.defs.records.keys import landing_key
from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.defs.records.retired import is_retired
from imgpipeline.defs.retention.definitions import retention_job
from imgpipeline.defs.retention.sweep import DataRetention, lifecycle_rules, record_key, sweep, totals
from imgpipeline.defs.tables import FRAMES, from_parquet
from imgpipeline.defs.warehouse import tracked
from imgpipeline.defs.warehouse.assets import build_retrack_sensor, hourly_tables
from imgpipeline.defs.warehouse.builds import build_key
from imgpipeline.ingest.messages import clip_key
from imgpipeline.lib.run_priority import RunPriority
from imgpipeline.resources import StorageResource, TrackingResource
from imgpipeline_tests.conftest import ON_EVERY_BACKEND
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import STOP_AFTER, kill_once_stopped, run_resources, storage_env, wait_stopped

pytestmark = [pytest.mark.integration]

TODAY = date(2026, 11, 24)  # with 30 days, 2026-10-24 and before go
OLD_HOUR = datetime(2026, 10, 20, 10, tzinfo=UTC)
UNBUILT_HOUR = datetime(2026, 10, 21, 5, tzinfo=UTC)
QUIET = {"log": lambda line: None}


def record(frame_id: str, hour: datetime, second: int) -> LandingRecord:
    return LandingRecord(schema=1, frame_id=frame_id, source_id="cam1",
                         captured_at=f"{hour:%Y-%m-%dT%H}:00:{second:02d}.000Z",
                         processed_at=f"{hour:%Y-%m-%dT%H}:05:00.000Z", topic="frames", partition=0,
                         offset=second, status="detected", object_count=1,
                         detections=[{"class_id": 0, "class_name": "person", "confidence": 0.9,
                                      "box": [10, 10, 20, 40]}])


def land(store, hour: datetime, name: str, records: list[LandingRecord]) -> None:
    store.put(landing_key(hour, name), b"".join(r.to_json() + b"\n" for r in records))


def build(storage: StorageResource, hour: datetime, tags: dict | None = None) -> dg.ExecuteInProcessResult:
    with fresh_instance() as instance:
        result = dg.materialize([hourly_tables], instance=instance, partition_key=f"{hour:%Y-%m-%d-%H}:00",
                                resources={"storage": storage, "tracking": TrackingResource()}, tags=tags)
    assert result.success
    return result


OLD = ["frames/cam1/2026-10-20/a.jpg", "frames/cam1/2026-10-24/b.jpg", "frames/cam2/2026-10-01/d.jpg",
       "annotated/cam1/2026-10-20/a.jpg", "reports/daily/2025-11-01.html",
       "landing/ranges-archive/dt=2026-10-20/frames/0/0-1700.jsonl"]
EVIDENCE = ["annotated/cam1/2026-10-20/a.alert-0000000001.jpg",
            "annotated/cam1/2026-10-20/a.alert-0000000001.crop.jpg",
            clip_key("annotated/cam1/2026-10-20/a.alert-0000000001.jpg")]
KEPT = ["frames/cam1/2026-11-20/c.jpg", "frames/cam1/2026-10-25/e.jpg", *EVIDENCE,
        "reports/daily/2026-10-20.html", "landing/ranges-archive/dt=2026-11-20/frames/0/1700-3400.jsonl",
        # not of the layout: never touched
        "frames/not a source/2026-01-01/x.jpg", "frames/cam1/2026-13-45/y.jpg", "frames/cam1/latest/z.jpg",
        "frames/cam1/20261001/w.jpg", "other/2026-01-01/v.jpg"]


@ON_EVERY_BACKEND  # an S3 console's folder object, which a folder cannot hold
def test_what_is_past_its_time_goes_and_the_rest_stays(storage):
    store = storage.open()
    for key in OLD + KEPT:
        store.put(key, b"bytes of " + key.encode())
    land(store, OLD_HOUR, "frames-0-0-3", [record(f"f{i}", OLD_HOUR, i) for i in range(3)])
    build(storage, OLD_HOUR)
    frames_before = store.get(FRAMES.hour_key(OLD_HOUR))
    land(store, UNBUILT_HOUR, "frames-0-3-4", [record("g", UNBUILT_HOUR, 1)])

    if storage.location.scheme == "s3":  # a folder object, as S3 consoles make: not a key of the layout
        marker = f"{storage.location.prefix}/frames/cam1/2026-10-20/"
        store.client.put_object(Bucket=storage.location.bucket, Key=marker, Body=b"")

    made = sweep(store, DataRetention(), today=TODAY, **QUIET)

    if storage.location.scheme == "s3":
        assert made["skipped"] == ["frames/cam1/2026-10-20/"]
        store.client.head_object(Bucket=storage.location.bucket, Key=marker)  # still there
    assert [k for k in OLD if store.exists(k)] == []
    assert [k for k in KEPT if not store.exists(k)] == []
    assert not store.exists(landing_key(OLD_HOUR, "frames-0-0-3")) and is_retired(store, OLD_HOUR.date())
    assert store.exists(landing_key(UNBUILT_HOUR, "frames-0-3-4"))
    assert not is_retired(store, UNBUILT_HOUR.date())
    # The warehouse keeps the rows of the frames whose bytes and landing are gone.
    assert store.get(FRAMES.hour_key(OLD_HOUR)) == frames_before
    assert from_parquet(frames_before).num_rows == 3
    # What was deleted, per kind, day and source, as recorded in the store.
    stored = json.loads(store.get(record_key(TODAY)))
    assert stored == made and stored["finished_at"]
    assert stored["deleted"] == {
        "frames": {"2026-10-01": {"cam2": 1}, "2026-10-20": {"cam1": 1}, "2026-10-24": {"cam1": 1}},
        "annotated": {"2026-10-20": {"cam1": 1}},
        "reports": {"2025-11-01": {"reports": 1}},
        "ranges_archive": {"2026-10-20": {"ranges_archive": 1}},
        "landing": {"2026-10-20": {"landing": 2}},  # its file, and the record of what its build read
    }
    assert not store.exists(build_key(OLD_HOUR))
    assert stored["kept"] == {"landing": {"2026-10-21": "no tables for hour=05"}}
    # Nothing left to do: a second sweep the same day deletes nothing more and keeps the record.
    assert totals(sweep(store, DataRetention(), today=TODAY, **QUIET)) == totals(made)

    # A late frame of the retired day lands; its hour's tables stay as they were built.
    land(store, OLD_HOUR, "frames-0-9-10", [record("late", OLD_HOUR, 30)])
    result = build(storage, OLD_HOUR)
    assert store.get(FRAMES.hour_key(OLD_HOUR)) == frames_before
    materialized = result.asset_materializations_for_node("hourly_tables")[0]
    assert materialized.metadata["hours_kept_as_built"].value == 1

    # Evidence has a keeping time of its own.
    sweep(store, DataRetention(evidence_keep_days=10), today=TODAY, **QUIET)
    assert not any(store.exists(k) for k in EVIDENCE)


BUILD_WHOLE = STOP_AFTER + """
import itertools, json
import dagster as dg
from imgpipeline.defs.warehouse import assets
from imgpipeline.resources import StorageResource, TrackingResource
looks = itertools.count(1)
# The second look at the mark is landing_of's, before it lists the hour: the process stops right after it.
stop_after(assets, "is_retired", when=lambda *args, **kwargs: next(looks) == 2)
with dg.DagsterInstance.ephemeral() as instance:
    result = dg.materialize([assets.hourly_tables], instance=instance, partition_key="2026-10-20-10:00",
                            resources={"storage": StorageResource.from_env(), "tracking": TrackingResource()},
                            tags={assets.WHOLE: "1"})
made = result.asset_materializations_for_node("hourly_tables")[0].metadata
print(json.dumps({"success": result.success, "kept": made["hours_kept_as_built"].value}))
"""


def test_a_day_retired_while_a_whole_build_lists_its_hour_keeps_the_hour_as_built(tmp_path):
    """Retention marks and empties the day after a whole build (a backfill, a retrack, a `whole` run) found
    it unmarked and before it lists the hour: the build sees the mark after its read and writes nothing.
    The build runs in its own process, stopped between its look at the mark and its listing while the sweep
    runs here."""
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    store = storage.open()
    land(store, OLD_HOUR, "frames-0-0-5", [record(f"f{i}", OLD_HOUR, i) for i in range(5)])
    build(storage, OLD_HOUR)
    built = store.get(FRAMES.hour_key(OLD_HOUR))
    building = subprocess.Popen([sys.executable, "-c", BUILD_WHOLE], env=storage_env(storage),
                                stdout=subprocess.PIPE, text=True)
    wait_stopped(building)
    swept = sweep(store, DataRetention(), today=TODAY, **QUIET)
    os.kill(building.pid, signal.SIGCONT)
    out, _ = building.communicate(timeout=300)
    assert building.returncode == 0, out
    assert swept["deleted"]["landing"] == {"2026-10-20": {"landing": 2}}
    assert from_parquet(store.get(FRAMES.hour_key(OLD_HOUR))).num_rows == 5
    assert store.get(FRAMES.hour_key(OLD_HOUR)) == built
    assert json.loads(out.strip().splitlines()[-1]) == {"success": True, "kept": 1}


def test_a_mark_on_a_retired_hour_ends_without_a_run(tmp_path):
    """An hour marked to be tracked again, then retired with its day: its tables are kept as built, so
    its mark goes (the run asked for it clears it; retrack_sensor clears it and asks for no run)."""
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    store = storage.open()
    before = OLD_HOUR - timedelta(hours=1)
    land(store, OLD_HOUR, "frames-0-0-3", [record(f"f{i}", OLD_HOUR, i) for i in range(3)])
    land(store, before, "frames-0-3-6", [record(f"g{i}", before, i) for i in range(3)])
    build(storage, OLD_HOUR)
    build(storage, before)  # OLD_HOUR continued an hour before that was not there yet: it is marked
    ((marked, digest),) = tracked.marked_hours(store)
    assert marked == OLD_HOUR
    sweep(store, DataRetention(), today=TODAY, **QUIET)
    assert is_retired(store, OLD_HOUR.date())
    built = store.get(FRAMES.hour_key(OLD_HOUR))

    build(storage, OLD_HOUR)  # the run retrack_sensor asked for
    assert tracked.marked_hours(store) == [] and store.get(FRAMES.hour_key(OLD_HOUR)) == built

    store.put(tracked.retrack_key(OLD_HOUR), digest.encode())  # as a run of an older version left it
    with fresh_instance() as instance, dg.build_sensor_context(
            instance=instance, resources={"storage": storage}) as context:
        assert not build_retrack_sensor(RunPriority())(context).run_requests
    assert tracked.marked_hours(store) == []


def test_a_dry_run_deletes_nothing(tmp_path):
    store = StorageResource(uri=tmp_path.as_uri()).open()
    for key in OLD:
        store.put(key, b"x")
    made = sweep(store, DataRetention(), today=TODAY, dry_run=True, **QUIET)
    assert totals(made) == {"frames": 3, "annotated": 1, "reports": 1, "ranges_archive": 1}
    assert all(store.exists(k) for k in OLD) and not store.exists(record_key(TODAY))


SWEEP = STOP_AFTER + """
from datetime import date
from imgpipeline.defs.retention.sweep import DataRetention, sweep
from imgpipeline.resources import StorageResource
store = StorageResource.from_env().open()
stop_after(store, "delete_many")  # the oldest day's frames deleted, the others not yet
sweep(store, DataRetention(), today=date(2026, 11, 24), log=lambda line: None)
"""


def test_a_sweep_killed_midway_is_finished_by_the_next(storage):
    store = storage.open()
    old = [f"frames/cam{c}/2026-10-{d:02d}/f{i}.jpg"
           for c in range(4) for d in range(1, 16) for i in range(12)]
    recent = [f"frames/cam{c}/2026-11-{d:02d}/f.jpg" for c in range(4) for d in range(20, 24)]
    for key in old + recent:
        store.put(key, b"x")
    sweeping = subprocess.Popen([sys.executable, "-c", SWEEP], env=storage_env(storage))
    kill_once_stopped(sweeping)
    left = [k for k in old if store.exists(k)]
    assert 0 < len(left) < len(old), "the sweep was not killed midway"

    made = sweep(store, DataRetention(), today=TODAY, **QUIET)
    assert [k for k in old if store.exists(k)] == []
    assert all(store.exists(k) for k in recent)
    # Every deleted object counted once, whichever sweep deleted it.
    assert totals(made) == {"frames": len(old)}
    assert made["deleted"]["frames"]["2026-10-01"] == {f"cam{c}": 12 for c in range(4)}


def test_the_job_sets_the_dead_letters_retention_and_records_it(kafka, storage, monkeypatch):
    from kafka.admin import ConfigResource, ConfigResourceType

    kafka.ensure_topics()
    monkeypatch.setenv("IMGPIPELINE_DEAD_LETTERS_KEEP_DAYS", "3")
    store = storage.open()
    store.put("frames/cam1/2020-01-01/a.jpg", b"x")
    with fresh_instance() as instance:
        result = retention_job.execute_in_process(instance=instance,
                                                  resources=run_resources(storage=storage, kafka=kafka))
    assert result.success and result.output_for_node("delete_by_age") == {"frames": 1}
    admin = kafka.admin()
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t)
                                            for t in kafka.dead_letter_topics])
    finally:
        admin.close()
    text = json.dumps(described, default=str)
    assert text.count("259200000") >= 2 and "compact,delete" in text
    day = datetime.now(UTC).date()
    stored = json.loads(store.get(record_key(day)))
    assert stored["dead_letters"]["retention_ms"] == {t: "259200000" for t in kafka.dead_letter_topics}


def test_the_lifecycle_rules_are_taken_by_s3(services):
    from imgpipeline_tests.conftest import s3_storage_resource

    storage = s3_storage_resource(services, prefix="site")
    rules, notes = lifecycle_rules(DataRetention(), storage.location.prefix)
    assert {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in rules["Rules"]} == {
        "site/frames/": 31, "site/reports/daily/": 366, "site/landing/ranges-archive/": 31}
    assert any(n.startswith("annotated/") for n in notes) and any(n.startswith("landing/") for n in notes)
    client = storage.open().client
    client.put_bucket_lifecycle_configuration(Bucket=storage.location.bucket, LifecycleConfiguration=rules)
    try:
        taken = client.get_bucket_lifecycle_configuration(Bucket=storage.location.bucket)["Rules"]
        assert {r["ID"] for r in taken} == {"imgpipeline-frames", "imgpipeline-reports",
                                            "imgpipeline-ranges-archive"}
    finally:
        client.delete_bucket_lifecycle(Bucket=storage.location.bucket)


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("IMGPIPELINE_FRAMES_KEEP_DAYS", "-1", "IMGPIPELINE_FRAMES_KEEP_DAYS"),
    ("IMGPIPELINE_LANDING_KEEP_DAYS", "a month", "IMGPIPELINE_LANDING_KEEP_DAYS"),
])
def test_a_keeping_time_that_cannot_be_fails_at_load(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=expected):
        DataRetention.from_env()
