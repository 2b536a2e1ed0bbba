"""The current hour's tracks follow its detections as they are extended: each run reads only the detections
added since the stored tracks, and comes out as the tracks of the hour made whole; when the detections
were made whole (a new base) or the stored tracks say nothing readable, every detection is read again.
Real materializations of both domains."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa
import pytest

from imgpipeline.defs.tables import DETECTIONS, TRACKS
from imgpipeline.defs.tracking import rows as tr
from imgpipeline.defs.tracking.assets import tracking_tables
from imgpipeline.resources import TrackingResource
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.test_defs.test_tracking.test_tracking import land
from imgpipeline_tests.test_defs.test_warehouse.test_builds import HOUR, KEY, build, scene

pytestmark = [pytest.mark.instance, pytest.mark.results]


def track(storage, instance) -> int:
    """Materialize the hour's tracking tables; the detections read for its tracks."""
    result = dg.materialize([tracking_tables], instance=instance, partition_key=KEY,
                            resources={"storage": storage, "tracking": TrackingResource(zones_file="none")})
    assert result.success
    failed = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
    assert not failed, failed
    (tracks,) = [m for m in result.get_asset_materialization_events() if m.asset_key == TRACKS.key]
    return tracks.materialization.metadata["detections_read"].value


def stored_tracks(store) -> pa.Table:
    return TRACKS.read(store, TRACKS.hour_key(HOUR)).replace_schema_metadata(None)


def detection_rows(store) -> int:
    return DETECTIONS.read(store, DETECTIONS.hour_key(HOUR)).num_rows


def test_tracks_follow_the_extended_hour_reading_only_what_was_added(storage):
    records, store = scene(), storage.open()
    with fresh_instance() as instance:
        read, totals = [], []
        for n, part in enumerate([records[:70], records[70:140], records[140:]]):
            land(store, part, f"frames-0-{n * 100}-{n * 100 + 100}")
            assert build(storage, instance)["hours_extended"] == (n > 0)
            read.append(track(storage, instance))
            totals.append(detection_rows(store))
        # The first run read every detection; each later one only those its extension added.
        assert read == [totals[0], totals[1] - totals[0], totals[2] - totals[1]]
        assert read[1] > 0 and read[2] > 0
        added = stored_tracks(store)
        assert track(storage, instance) == 0  # nothing new: nothing read
        assert stored_tracks(store).equals(added)

        # The detections made whole (a new base): every detection is read, and the tracks are the same.
        build(storage, instance, whole=True)
        assert track(storage, instance) == totals[2]
        whole = stored_tracks(store)
    assert added.equals(whole)
    assert added.num_rows == len(set(zip(*(whole.column(c).to_pylist() for c in ("source_id", "track_id")),
                                         strict=True)))
    assert sum(added.column("frames").to_pylist()) > 0


def tracked_then_extended(storage, instance) -> pa.Table:
    """The hour's first part landed, built and tracked, then its second landed and built (not tracked yet):
    the stored tracks, which the next run of the hour would add to."""
    records, store = scene(), storage.open()
    land(store, records[:100], "frames-0-0-100")
    build(storage, instance)
    track(storage, instance)
    land(store, records[100:], "frames-0-100-200")
    build(storage, instance)
    return TRACKS.read(store, TRACKS.hour_key(HOUR))


def restamped(store, stored: pa.Table, key: bytes, value: bytes) -> None:
    TRACKS.write(store, TRACKS.hour_key(HOUR),
                 stored.replace_schema_metadata({**stored.schema.metadata, key: value}))


@pytest.mark.parametrize("taken", [b"not json", b'{"cam": "soon"}', b"[1, 2]", b'{"cam": true}',
                                   b'{"cam": 123456789012345678901234567890}'])
def test_stored_tracks_with_a_damaged_or_hostile_mark_are_made_from_every_detection(storage, taken):
    store = storage.open()
    with fresh_instance() as instance:
        restamped(store, tracked_then_extended(storage, instance), tr.TAKEN_UNTIL, taken)
        assert track(storage, instance) == detection_rows(store)
        damaged = stored_tracks(store)
        build(storage, instance, whole=True)
        track(storage, instance)
        assert damaged.equals(stored_tracks(store))


def test_tracks_that_took_in_more_than_the_stored_detections_hold_are_made_from_every_detection(storage):
    """Two runs of an hour that overlapped: the stored tracks took in an extension the detections as
    stored now do not hold (of the same base). Added to, they would count those frames twice."""
    records, store = scene(), storage.open()
    with fresh_instance() as instance:
        land(store, records[:100], "frames-0-0-100")
        build(storage, instance)
        earlier = store.get(DETECTIONS.hour_key(HOUR))
        land(store, records[100:], "frames-0-100-200")
        build(storage, instance)
        track(storage, instance)  # the tracks of both parts
        store.put(DETECTIONS.hour_key(HOUR), earlier)  # the first part's detections written last
        assert track(storage, instance) == detection_rows(store)
        tracks = TRACKS.read(store, TRACKS.hour_key(HOUR))
        detections = DETECTIONS.read(store, DETECTIONS.hour_key(HOUR))
    assert sum(tracks.column("frames").to_pylist()) == detections.column("track_id").drop_null().length()


def test_tracks_made_under_other_rules_are_made_again_from_every_detection(storage):
    """Stored tracks stamped by another version of the tracks' rules are never merged with."""
    store = storage.open()
    with fresh_instance() as instance:
        stored = tracked_then_extended(storage, instance)
        base = stored.schema.metadata[tr.TRACKED_BASE].decode()
        assert base.endswith(f"@{tr.TRACKS_RULES}")
        restamped(store, stored, tr.TRACKED_BASE, (base.rsplit("@", 1)[0] + "@0").encode())
        assert track(storage, instance) == detection_rows(store)
        assert TRACKS.read(store, TRACKS.hour_key(HOUR)).schema.metadata[tr.TRACKED_BASE].decode() == base
