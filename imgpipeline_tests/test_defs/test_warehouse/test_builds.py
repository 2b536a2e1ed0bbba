"""The current hour built incrementally: a run of one hour adds the landing files new since its last
build, and comes out as the hour made whole would; what it cannot extend (a file landed again, late
frames, a build cut short between its tables and its record) it makes whole. Real materializations."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow as pa
import pytest

from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.defs.tables import DETECTIONS, FRAMES
from imgpipeline.defs.warehouse import builds
from imgpipeline.defs.warehouse.assets import WHOLE, hourly_tables
from imgpipeline.resources import TrackingResource
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.scenes import frames_of, landing_records, moving
from imgpipeline_tests.test_defs.test_tracking.test_tracking import land

pytestmark = [pytest.mark.instance, pytest.mark.results]

HOUR = datetime(2026, 11, 20, 11, tzinfo=UTC)
KEY = "2026-11-20-11:00"


def scene() -> list[LandingRecord]:
    """Forty seconds at 5 frames/s from 11:00:05: people and cars crossing, one parked all along; tracks
    run across the points where the frames are split into ranges."""
    things = [moving("person", 100, 540, 2, 30), moving("car", 600, 50, 10, 36, y=300),
              moving("car", 20, 21, 0, 40, y=460), moving("person", 500, 80, 18, 26, y=200)]
    return landing_records(frames_of(things, HOUR + timedelta(seconds=5), 40, 5.0))


def build(storage, instance, whole: bool = False) -> dict:
    """Materialize the hour alone; the frames' materialization metadata."""
    result = dg.materialize([hourly_tables], instance=instance, partition_key=KEY,
                            tags={WHOLE: "1"} if whole else {},
                            resources={"storage": storage, "tracking": TrackingResource()})
    assert result.success
    failed = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
    assert not failed, failed
    (frames,) = [m for m in result.get_asset_materialization_events() if m.asset_key == FRAMES.key]
    return {k: v.value for k, v in frames.materialization.metadata.items()}


def stored(store) -> tuple[pa.Table, pa.Table]:
    return tuple(t.read(store, t.hour_key(HOUR)).replace_schema_metadata(None) for t in (FRAMES, DETECTIONS))


def whole_tables(storage, instance) -> tuple[pa.Table, pa.Table]:
    build(storage, instance, whole=True)
    return stored(storage.open())


def test_ranges_added_one_by_one_come_out_as_the_hour_made_whole(storage):
    records, store = scene(), storage.open()
    thirds = [records[:70], records[70:140], records[140:]]
    with fresh_instance() as instance:
        extended = []
        for n, part in enumerate(thirds):
            land(store, part, f"frames-0-{n * 100}-{n * 100 + 100}")
            extended.append(build(storage, instance)["hours_extended"])
        assert extended == [0, 1, 1]  # the first build had nothing to extend
        # A camera that saw nothing all hour has no track whatever the order: its frames landing later
        # than frames it captured after them (concurrent ranges) still extend the hour.
        idle = landing_records(frames_of([], HOUR + timedelta(seconds=5), 10, 2.0, "idle"), source="idle")
        for n, part in enumerate((idle[10:], idle[:10])):
            land(store, part, f"frames-1-{n * 100}-{n * 100 + 100}")
            assert build(storage, instance)["hours_extended"] == 1
        records += idle
        recorded = builds.Build.read(store, HOUR)
        assert len(recorded.landing) == 5 and recorded.frames == len(records)
        frames, detections = stored(store)
        assert frames.num_rows == len(records)
        assert detections.num_rows == sum(r.object_count for r in records)
        ids = set(detections.column("track_id").to_pylist()) - {None}
        assert len(ids) == 4  # each thing one id, across the builds
        # Nothing new: nothing is written again.
        before = store.get(DETECTIONS.hour_key(HOUR))
        assert build(storage, instance)["hours_extended"] == 1
        assert store.get(DETECTIONS.hour_key(HOUR)) == before
        whole_frames, whole_detections = whole_tables(storage, instance)
    assert frames.equals(whole_frames)
    assert detections.equals(whole_detections)


def test_what_cannot_be_extended_is_made_whole(storage):
    records, store = scene(), storage.open()
    with fresh_instance() as instance:
        land(store, records[:100], "frames-0-0-100")
        build(storage, instance)
        # A range landed again with a record of its changed: the hour is made whole.
        changed = [*records[:99], LandingRecord(**{**vars_of(records[99]), "status": "error", "error": "x",
                                                   "object_count": 0, "detections": []})]
        land(store, changed, "frames-0-0-100")
        assert build(storage, instance)["hours_extended"] == 0
        assert stored(store)[0].column("status").to_pylist().count("error") == 1
        # Frames captured before the stored ones (late): whole, and they are in.
        late = [LandingRecord(**{**vars_of(r), "frame_id": f"late-{r.frame_id}"}) for r in records[10:12]]
        land(store, late, "frames-0-500-600")
        assert build(storage, instance)["hours_extended"] == 0
        assert stored(store)[0].num_rows == 102
        # A frame landed again by another range: whole, and it is there once.
        land(store, records[50:51], "frames-0-600-700")
        assert build(storage, instance)["hours_extended"] == 0
        assert stored(store)[0].num_rows == 102
        # A record that is not one this code wrote (damaged, hostile): made whole, and written anew.
        for junk in (b"\x00not json", b'{"id": 1}', b'{"id": "x", "landing": [], "frames": "many"}'):
            store.put(builds.build_key(HOUR), junk)
            assert build(storage, instance)["hours_extended"] == 0
        assert builds.Build.read(store, HOUR).frames == stored(store)[0].num_rows
        # Built by another version of the code: made whole, not extended into a mix of the two.
        recorded = builds.Build.read(store, HOUR)
        replace(recorded, version="an older one").write(store, HOUR)
        land(store, records[100:101], "frames-0-700-701")
        assert build(storage, instance)["hours_extended"] == 0
        assert builds.Build.read(store, HOUR).version == builds.code_version()
        # A build cut short after its tables, before its record (as a killed run leaves it): the tables
        # are not of the recorded build, so the next run makes the hour whole.
        record = store.get(builds.build_key(HOUR))
        land(store, records[101:150], "frames-0-100-200")
        assert build(storage, instance)["hours_extended"] == 1
        store.put(builds.build_key(HOUR), record)
        land(store, records[150:], "frames-0-200-300")
        assert build(storage, instance)["hours_extended"] == 0
        frames, detections = stored(store)
        assert frames.num_rows == len(records) + 2
        whole_frames, whole_detections = whole_tables(storage, instance)
    assert frames.equals(whole_frames) and detections.equals(whole_detections)


def vars_of(record: LandingRecord) -> dict:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def test_the_check_compares_the_stored_tables_with_what_was_read():
    from imgpipeline.defs.tables.checks import no_failures
    from imgpipeline.defs.warehouse import checks

    records = scene()
    frames, detections = builds.tables_of(records[:10], {})
    made = builds.Made(frames, detections, "none", builds.Build("b1", {}, 10), records[5:12], 1)
    stamped = [builds.stamped(t, builds.Build("b1", {}, 10), "none") for t in (frames, detections)]
    failures = no_failures(checks.CHECKS, "frames", "detections")
    checks.check_hour(KEY, *stamped, made.against_landing(*stamped), failures)
    found = failures["frames", "matches_landing"][KEY]
    assert found["missing"] == ["cam/cam-000010", "cam/cam-000011"] and "builds" not in found
    # Frames and detections written by two builds (two runs of the hour at once) fail it too.
    failures = no_failures(checks.CHECKS, "frames", "detections")
    other = builds.stamped(detections, builds.Build("b2", {}, 10), "none")
    made = builds.Made(frames, detections, "none", builds.Build("b1", {}, 10), records[:10], 1)
    checks.check_hour(KEY, stamped[0], other, made.against_landing(stamped[0], other), failures)
    assert "b2" in failures["frames", "matches_landing"][KEY]["builds"]
    # Made whole: against every record read.
    whole = builds.Made(frames, detections, "none", builds.Build("b1", {}, 10), records[:11], 1, "asked")
    assert whole.against_landing(*stamped)["missing"] == ["cam/cam-000010"]
