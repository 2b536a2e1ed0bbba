"""Landing compaction: a built hour's files become one per partition with the same records, the
warehouse reads them the same way, a late frame still lands and is added, an hour not yet due or never
built is left alone, and a compaction SIGKILLed midway is finished by the next one."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from imgpipeline.defs.hours import hour_key
from imgpipeline.defs.records.keys import landing_key, uris_name
from imgpipeline.defs.records.reader import landing_keys, landing_versions
from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.defs.streaming.health import source_activity
from imgpipeline.defs.streaming.landing import Landed, Neighbours, Spool, record_sources
from imgpipeline.defs.warehouse import builds
from imgpipeline.defs.warehouse.assets import hourly_tables
from imgpipeline.defs.warehouse.compaction import Compaction, compact, compact_hour, compact_landing_job
from imgpipeline.resources import TrackingResource
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import STOP_AFTER, kill_once_stopped, run_resources, storage_env
from imgpipeline_tests.scenes import frames_of, landing_records
from imgpipeline_tests.test_defs.test_warehouse.test_builds import HOUR, build, scene, stored, whole_tables

pytestmark = [pytest.mark.integration, pytest.mark.results]

NOW = HOUR + timedelta(hours=4)  # the hour ended three hours ago: due with IMGPIPELINE_COMPACT_AFTER_H=2
QUIET = {"log": lambda line: None}


def land(store, records: list[LandingRecord], name: str, hour: datetime = HOUR) -> None:
    spool = Spool()
    for record in records:
        spool.add(record)
    spool.land(store, landing_key(hour, name))
    spool.close()


def lines(store) -> list[bytes]:
    """Every landing line of the hour, each once: what the hour's files hold between them."""
    return sorted({line for key in landing_keys(store, HOUR) for line in store.get(key).splitlines()})


def names(store) -> list[str]:
    return [key.rsplit("/", 1)[-1] for key in landing_keys(store, HOUR)]


def land_ranges(store) -> None:
    """The scene's camera on partition 0 in three ranges, an idle camera on partition 1 in two, and a
    run over explicit URIs."""
    records = scene()
    for n, first in enumerate((0, 70, 140)):
        land(store, records[first:first + 70] if n < 2 else records[first:], f"frames-0-{first}-{first + 70}")
    idle = landing_records(frames_of([], HOUR + timedelta(seconds=5), 10, 2.0, "idle"), source="idle")
    land(store, idle[:10], "frames-1-0-10")
    land(store, idle[10:], "frames-1-10-20")
    land(store, landing_records(frames_of([], HOUR + timedelta(seconds=1), 1, 1.0, "hand"), source="hand"),
         uris_name(["s3://bucket/frames/hand/1.jpg"]))


def test_a_built_hour_is_compacted_per_partition_and_reads_the_same(storage):
    store = storage.open()
    land_ranges(store)
    before = lines(store)
    with fresh_instance() as instance:
        # Not built yet, or not due yet: left as it is.
        assert compact_hour(store, HOUR) == "no build of it passed its checks"
        build(storage, instance)
        tables = stored(store)
        early = HOUR + timedelta(hours=2, minutes=30)
        assert compact(store, Compaction(after_h=2), early, **QUIET)["hours"] == 0
        assert compact(store, Compaction(after_h=0), NOW, **QUIET)["hours"] == 0
        assert len(names(store)) == 6
        # A partition a queued or running run may still write to waits: only partition 1 goes.
        busy = [("frames", 0, 0, 100, 150)]
        assert compact(store, Compaction(after_h=2), NOW, busy=busy, **QUIET)["files_after"] == 5
        assert names(store)[:3] == ["frames-0-0-70.jsonl", "frames-0-140-210.jsonl", "frames-0-70-140.jsonl"]

        done = compact(store, Compaction(after_h=2), NOW, **QUIET)
        assert done == {"hours": 1, "files_before": 5, "files_after": 3}
        assert names(store) == ["frames-0-0-210.jsonl", "frames-1-0-20.jsonl",
                                f"{uris_name(['s3://bucket/frames/hand/1.jpg'])}.jsonl"]
        assert lines(store) == before  # every record, once
        # A range run again screens against the compacted file as against its neighbours, less its own
        # frames: it detects them again.
        again = Landed().of(store, HOUR, "frames-0-70-140", Neighbours("frames", 0, 0, 70, 100_000))
        records = scene()
        assert {r.identity for r in records[70:140]}.isdisjoint(again)
        assert {r.identity for r in records[:70] + records[140:]} <= again
        assert compact_hour(store, HOUR) == "compacted already"
        # The build's record follows the compacted files: nothing new, nothing written again.
        assert set(builds.Build.read(store, HOUR).landing) == set(landing_versions(store, HOUR))
        detections = store.get(builds.DETECTIONS.hour_key(HOUR))
        assert build(storage, instance)["hours_extended"] == 1
        assert store.get(builds.DETECTIONS.hour_key(HOUR)) == detections
        # Made whole from the compacted files: the same tables.
        whole = whole_tables(storage, instance)
        assert all(a.equals(b) for a, b in zip(whole, tables, strict=True))

        # Cut short after its deletes, before the build's record followed: the next one brings it up to date.
        late = landing_records(frames_of([], HOUR + timedelta(seconds=2), 1, 1.0, "late"), source="late")
        land(store, late, "frames-0-500-501")
        build(storage, instance)
        record = store.get(builds.build_key(HOUR))
        compact(store, Compaction(after_h=2), NOW, **QUIET)
        store.put(builds.build_key(HOUR), record)
        assert compact_hour(store, HOUR) == "compacted already"
        assert set(builds.Build.read(store, HOUR).landing) == set(landing_versions(store, HOUR))

        # Late frames land beside the compacted file: not compacted before the hour is made again with
        # them; an idle camera's frame extends it, one of the tracked camera's makes it whole.
        tracked_late = replace(records[5], frame_id="cam-late")
        land(store, [tracked_late], "frames-0-600-601")
        assert compact_hour(store, HOUR).startswith("files landed since its build")
        assert build(storage, instance)["hours_extended"] == 0
        frames, _ = stored(store)
        assert frames.num_rows == tables[0].num_rows + 2
        assert {"late-000000", "cam-late"} <= set(frames.column("frame_id").to_pylist())
        assert compact(store, Compaction(after_h=2), NOW, **QUIET)["files_after"] == 3


COMPACT = STOP_AFTER + """
import sys
from datetime import datetime
from imgpipeline.defs.warehouse.compaction import Compaction, compact
from imgpipeline.resources import StorageResource
store = StorageResource.from_env().open()
stop_after(store, "put_file", lambda key, *_, **__: key == sys.argv[2])  # the first partition's span
compact(store, Compaction(after_h=2), datetime.fromisoformat(sys.argv[1]))
"""


def test_a_compaction_killed_midway_is_finished_by_the_next(storage):
    store = storage.open()
    idle = frames_of([], HOUR + timedelta(seconds=50), 200, 5.0, "b")
    records = [*scene(), *landing_records(idle, source="b")]
    # Many small ranges on two partitions: killed once the first one's file is compacted, before the second's.
    size = 8
    for n in range(0, len(records), size):
        land(store, records[n:n + size], f"frames-{n // size % 2}-{n}-{n + size}")
    before = lines(store)
    first, second = (landing_key(HOUR, f"frames-{p}-{p * size}-{len(records) - size + p * size}")
                     for p in (0, 1))
    with fresh_instance() as instance:
        build(storage, instance)
        tables = stored(store)
        compacting = subprocess.Popen([sys.executable, "-c", COMPACT, NOW.isoformat(), first],
                                      env=storage_env(storage))
        kill_once_stopped(compacting)
        assert store.exists(first) and not store.exists(second), "the compaction was not killed midway"
        # Cut short: lines twice at worst, the hour reads the same, and `status` counts each frame once.
        assert lines(store) == before
        assert sum(len(store.get(k).splitlines()) for k in landing_keys(store, HOUR)) > len(before)
        record_sources(store, {"b": {"ingested_at": records[-1].ingested_at}})
        activity = source_activity(store, HOUR + timedelta(hours=1), timedelta(hours=2))
        assert [(a.source_id, a.came_in) for a in activity] == [("b", len(idle))]
        assert all(a.equals(b) for a, b in zip(whole_tables(storage, instance), tables, strict=True))

        compact(store, Compaction(after_h=2), NOW, **QUIET)
        assert sorted(names(store)) == sorted(key.rsplit("/", 1)[-1] for key in (first, second))
        assert lines(store) == before
        assert sum(len(store.get(key).splitlines()) for key in (first, second)) == len(before)
        assert set(builds.Build.read(store, HOUR).landing) == {first, second}
        assert build(storage, instance)["hours_extended"] == 1  # the record follows: nothing new
        assert all(a.equals(b) for a, b in zip(whole_tables(storage, instance), tables, strict=True))


def test_the_hourly_job_compacts_the_hours_due(storage, monkeypatch):
    hour = (datetime.now(UTC) - timedelta(hours=4)).replace(minute=0, second=0, microsecond=0)
    store = storage.open()
    records = landing_records(frames_of([], hour + timedelta(seconds=1), 4, 1.0, "cam"))
    for n in (0, 2):
        land(store, records[n:n + 2], f"frames-0-{n}-{n + 2}", hour)
    resources = {"storage": storage, "tracking": TrackingResource()}
    monkeypatch.setenv("IMGPIPELINE_COMPACT_AFTER_H", "2")
    with fresh_instance() as instance:
        assert dg.materialize([hourly_tables], instance=instance, partition_key=hour_key(hour),
                              resources=resources).success
        result = compact_landing_job.execute_in_process(instance=instance,
                                                        resources=run_resources(storage=storage))
    assert result.success
    assert result.output_for_node("compact_landing_op") == {"hours": 1, "files_before": 2, "files_after": 1}
    assert [key.rsplit("/", 1)[-1] for key in landing_keys(store, hour)] == ["frames-0-0-4.jsonl"]
