"""The landing record: one declared type, written and read back as the contract says."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from imgpipeline.defs.records.keys import landing_key
from imgpipeline.defs.records.reader import Landing, all_records, hour_records, parse_records, read_records
from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.defs.streaming.landing import Landed, Neighbours, Spool, record_sources
from imgpipeline.resources import StorageResource
from imgpipeline_tests.conftest import ON_EVERY_BACKEND

CONTRACTS = Path(__file__).parents[3] / "docs" / "contracts.md"


def a_record(**fields) -> LandingRecord:
    return LandingRecord(schema=1, frame_id="f1", source_id="cam", captured_at="2026-11-21T10:00:00.000Z",
                         status="detected", object_count=1, ingested_at="2026-11-21T10:00:01.000Z",
                         detections=[{"class_id": 0, "class_name": "person", "confidence": 0.9,
                                      "box": [1, 2, 3, 4]}], **fields)


def test_a_record_is_written_in_the_contracts_order_and_read_back_equal(tmp_path):
    record = a_record(model="yolov4-tiny-416", engine="openvino", precision="f32")
    written = json.loads(record.to_json())
    assert list(written) == [f.name for f in dataclasses.fields(LandingRecord)]
    assert written["detections"][0]["box"] == [1, 2, 3, 4]
    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    spool = Spool()
    spool.add(record)
    key = landing_key(record.event_hour, "frames-0-0-1")
    spool.land(store, key)
    spool.close()
    assert list(read_records(store, key)) == [record]
    assert key == "landing/metadata/dt=2026-11-21/hour=10/frames-0-0-1.jsonl"


def test_records_of_other_versions_read_with_what_they_hold():
    older = {"schema": 1, "frame_id": "f1", "source_id": "cam", "captured_at": "2026-11-21T10:00:00.000Z",
             "status": "detected", "object_count": 0, "detections": []}  # landed before identities
    newer = {**older, "frame_id": "f2", "tracked_by": "a later version"}
    read = list(parse_records(b"\n".join(json.dumps(x).encode() for x in (older, newer)) + b"\n\n"))
    assert [r.frame_id for r in read] == ["f1", "f2"]
    assert {(r.model, r.engine, r.precision) for r in read} == {(None, None, None)}
    assert not hasattr(read[1], "tracked_by")


def test_out_of_range_records_go_to_the_hour_they_reached_the_broker():
    record = a_record()
    assert record.event_hour.hour == 10 and record.processed and record.identity == ("cam", "f1")
    record.status, record.captured_at = "out_of_range", "2099-01-01T00:00:00.000Z"
    assert not record.processed and record.event_hour.isoformat() == "2026-11-21T10:00:00+00:00"


def test_the_contract_names_every_field():
    section = CONTRACTS.read_text().split("## Landing record", 1)[1].split("\n## ", 1)[0]
    assert [f.name for f in dataclasses.fields(LandingRecord) if f"`{f.name}`" not in section] == []


def test_a_run_screens_against_its_partitions_ranges_within_the_window(tmp_path):
    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    hour = a_record().event_hour
    files = {"frames-0-0-100": "far", "frames-0-150000-150100": "near", "frames-0-200100-200200": "after",
             "frames-1-199000-199100": "other-partition", "frames-0-199000-199100-g1": "other-generation",
             "frames-x-0-199000-199100": "other-topic", "uris-0123456789abcdef": "by-uri",
             "frames-0-200000-200100": "own"}
    for name, frame_id in files.items():
        record = dataclasses.replace(a_record(), frame_id=frame_id)
        store.put(landing_key(hour, name), record.to_json() + b"\n")
    near = Neighbours("frames", 0, 0, start=200000, window=100000)
    assert {f for _, f in Landed().of(store, hour, "frames-0-200000-200100", near)} == {
        "near", "after", "by-uri"}
    every = Landed().of(store, hour, "frames-0-200000-200100")
    assert {f for _, f in every} == set(files.values()) - {"own"}


def test_before_landing_a_run_reads_only_the_files_landed_since_and_drops_their_frames_from_its_spool(
        tmp_path):
    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    hour = a_record().event_hour

    def land(name: str, *frame_ids: str, status: str = "detected") -> None:
        lines = [dataclasses.replace(a_record(), frame_id=f, status=status).to_json() for f in frame_ids]
        store.put(landing_key(hour, name), b"\n".join(lines) + b"\n")

    landed = Landed()
    land("frames-0-0-10", "a")
    assert {f for _, f in landed.of(store, hour, "frames-0-10-20")} == {"a"}
    land("frames-0-20-30", "b", "c")  # a range of the partition that landed meanwhile
    land("frames-0-30-40", "x", status="error")  # errors are not frames processed
    land("frames-0-40-50", "own")  # one this run wrote (a run of many ranges)
    landed.wrote(landing_key(hour, "frames-0-40-50"))
    near = Neighbours("frames", 0, 0, start=10, window=1000)
    land("frames-1-0-10", "other-partition")
    assert {f for _, f in landed.since(store, hour, "frames-0-10-20", near)} == {"b", "c"}
    assert landed.since(store, hour, "frames-0-10-20", near) == set()
    land("frames-0-20-30", "b", "c", "d")  # written again (a replay of that range): read again
    assert {f for _, f in landed.since(store, hour, "frames-0-10-20", near)} == {"b", "c", "d"}
    assert {f for _, f in landed.of(store, hour, "frames-0-10-20")} == {"a", "b", "c", "d"}

    spool = Spool()
    for frame_id, status in (("b", "detected"), ("c", "error"), ("e", "detected")):
        spool.add(dataclasses.replace(a_record(), frame_id=frame_id, status=status))
    dropped = spool.drop({("cam", "b"), ("cam", "c")})
    assert [r.frame_id for r in dropped] == ["b"]  # the error record of c stays: c was not processed here
    key = landing_key(hour, "frames-0-10-20")
    spool.land(store, key)
    spool.close()
    assert [(r.frame_id, r.status) for r in read_records(store, key)] == [("c", "error"), ("e", "detected")]
    assert spool.records == 2


@pytest.mark.integration
@ON_EVERY_BACKEND
def test_status_reads_only_the_landing_files_written_since_its_window_began(storage):
    """A file last written before the window holds only records processed before it: `status` counts
    from the files written since (the store's clock, a slack for the runs' clock aside), so its cost is the
    window's frames, not its hours'."""
    from imgpipeline.defs.streaming import health

    store = storage.open()
    hour = datetime(2026, 11, 21, 10, tzinfo=UTC)
    record_sources(store, {"cam": {"ingested_at": "2026-11-21T10:00:01.000Z"}})
    keys = []
    for n, name in enumerate(("frames-0-0-1", "frames-0-1-2")):
        if n:
            time.sleep(2.2)  # scenario: two files written apart, as S3 dates an object to the second
        record = dataclasses.replace(a_record(offset=n, processed_at="2026-11-21T10:30:00.000Z"),
                                     frame_id=f"f{n}")
        keys.append(landing_key(hour, name))
        store.put(keys[-1], record.to_json() + b"\n")
    written = store.written("landing/metadata/")
    assert sorted(written) == keys and written[keys[1]] - written[keys[0]] >= 1
    between = datetime.fromtimestamp((written[keys[0]] + written[keys[1]]) / 2, UTC)
    # Both records say they were processed in the window; the first one's file was written before it.
    now = datetime(2026, 11, 21, 10, 40, tzinfo=UTC)
    window = now - datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    assert [r.frame_id for r in hour_records(store, hour, written_since=between)] == ["f1"]
    assert [r.frame_id for r in hour_records(store, hour)] == ["f0", "f1"]
    # A slack that makes the window begin at `between` for the store's clock:
    (activity,) = health.source_activity(store, now, window, slack=now - between - window)
    assert activity.statuses["detected"] == 1
    (activity,) = health.source_activity(store, now, window, slack=timedelta(days=3650))  # a store far behind
    assert activity.statuses["detected"] == 2


@ON_EVERY_BACKEND
def test_a_landing_looked_at_again_reads_only_what_is_new_and_gives_what_a_full_read_gives(storage):
    """`Landing` (the waits' and watches' view of a growing landing) against `all_records` after each
    change a landing sees: a file added, a file written again under its key (the same size too), files
    compacted into one and deleted, a file deleted between the listing and its read; only the files new or
    changed since the last look are read."""
    store = storage.open()
    hour = datetime(2026, 11, 21, 10, tzinfo=UTC)
    read: list[str] = []
    get = store.get
    store.get = lambda key, **kw: read.append(key) or get(key, **kw)  # which files each look reads

    def landed(name: str, *frames: str) -> str:
        key = landing_key(hour, name)
        lines = (dataclasses.replace(a_record(), frame_id=f).to_json() + b"\n" for f in frames)
        store.put(key, b"".join(lines))
        return key

    def look() -> tuple[list[str], list[str]]:
        """The frames the landing gives now, and the files it read for them."""
        read.clear()
        ids, reads = sorted(r.frame_id for r in landing.records()), list(read)
        assert ids == sorted(r.frame_id for r in all_records(store))
        return ids, reads

    landing = Landing(store)
    assert landing.records() == []
    first = landed("frames-0-0-2", "f0", "f1")
    assert look() == (["f0", "f1"], [first])
    second = landed("frames-0-2-3", "f2")
    assert look() == (["f0", "f1", "f2"], [second])
    assert look() == (["f0", "f1", "f2"], [])  # nothing new: nothing read
    landed("frames-0-2-3", "f2", "f3")  # written again under its key (a run over the same range)
    assert look() == (["f0", "f1", "f2", "f3"], [second])
    landed("frames-0-2-3", "f2", "f4")  # and again, the same size
    assert look() == (["f0", "f1", "f2", "f4"], [second])
    landed("frames-0-2-3", "f2", "f3")
    assert look() == (["f0", "f1", "f2", "f3"], [second])
    compacted = landed("frames-0-0-3", "f0", "f1", "f2", "f3")
    store.delete(first)
    store.delete(second)
    assert look() == (["f0", "f1", "f2", "f3"], [compacted])
    gone = landed("frames-1-0-1", "f9")  # listed, then deleted before it is read (compacted meanwhile)
    versions = store.versions
    store.versions = lambda prefix: versions(prefix) | (store.delete(gone) or {})
    assert sorted(r.frame_id for r in landing.records()) == ["f0", "f1", "f2", "f3"]


def test_a_run_of_many_ranges_writes_a_sources_times_as_they_move_ten_seconds_never_back(tmp_path):
    """A follower's ranges come a second apart: each source's times are written when they moved
    SOURCE_STEP_S since the run last wrote them, not at every range, and never behind what another run
    wrote meanwhile."""
    from imgpipeline.defs.streaming.landing import SOURCE_STEP_S, source_times
    from imgpipeline.resources import StorageResource

    store = StorageResource(uri=str(tmp_path / "store")).open()
    key = "landing/sources/cam.json"
    wrote: dict[str, dict] = {}

    def at(second: float) -> dict:
        return {"cam": {"processed_at": f"2026-11-21T10:00:{second:06.3f}Z"}}

    assert record_sources(store, at(1), wrote) == [key]
    assert record_sources(store, at(1 + SOURCE_STEP_S - 1), wrote) == []  # moved 9 s: passed over
    assert source_times(store, key)["processed_at"] == "2026-11-21T10:00:01.000Z"
    assert record_sources(store, at(1 + SOURCE_STEP_S), wrote) == [key]
    assert source_times(store, key)["processed_at"] == "2026-11-21T10:00:11.000Z"
    # Another run wrote a later time meanwhile: this one's next write keeps it.
    record_sources(store, at(40))
    assert record_sources(store, at(30), wrote) == []
    assert source_times(store, key)["processed_at"] == "2026-11-21T10:00:40.000Z"
    # A second source is written at its first range, whatever the first one's state.
    assert record_sources(store, {"cam-2": at(30)["cam"]}, wrote) == ["landing/sources/cam-2.json"]
    # A time damaged in the file (by hand, or a value that is no time) is written over, not kept for good
    # (text order put "yesterday" after every date) nor a failure at every range.
    for damaged in ('"yesterday"', "5", "null"):
        store.put(key, b'{"source_id": "cam", "processed_at": %s}' % damaged.encode())
        wrote["cam"] = source_times(store, key)
        assert record_sources(store, at(41), wrote) == [key]
        assert source_times(store, key)["processed_at"] == "2026-11-21T10:00:41.000Z"
