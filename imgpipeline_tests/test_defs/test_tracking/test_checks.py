"""The tracking checks fail on tables that break what they prove (and pass on ones that keep it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa

from imgpipeline.defs.tables import DETECTIONS, OBJECT_COUNTS
from imgpipeline.defs.tracking import checks
from imgpipeline.defs.tracking.rows import tracks_table

HOUR = datetime(2026, 11, 20, 10, tzinfo=UTC)


def detections(rows: list[tuple[str, int | None]]) -> pa.Table:
    """(frame_id, track_id) rows of one source, one person each, a second apart."""
    return pa.Table.from_pylist([{
        "frame_id": frame, "source_id": "cam", "captured_at": HOUR + timedelta(seconds=n),
        "detection_index": 0, "class_id": 0, "class_name": "person", "confidence": 0.9, "class_rank": 1,
        "x": 10 * n, "y": 0, "w": 20, "h": 40, "track_id": track,
    } for n, (frame, track) in enumerate(rows)], schema=DETECTIONS.schema)


def counts(rows: list[dict]) -> pa.Table:
    base = {"hour_start": HOUR, "source_id": "cam", "class_name": "person", "zones_sha256": "ab"}
    return pa.Table.from_pylist([{**base, **row} for row in rows], schema=OBJECT_COUNTS.schema)


def failed(tracks, object_counts, hour_detections, day_tracks) -> set[str]:
    failures = {(a, n): {} for a in checks.CHECKS for n in checks.CHECKS[a]}
    checks.check_hour("2026-11-20-10:00", tracks, object_counts, hour_detections, day_tracks, failures)
    return {name for (_, name), found in failures.items() if found}


GOOD_COUNTS = [{"kind": "objects", "name": None, "unique_objects": 2},
               {"kind": "line", "name": "door", "unique_objects": 2, "crossed_in": 2, "crossed_out": 1}]


def test_consistent_tables_pass_every_check():
    d = detections([("f1", 7), ("f2", 7), ("f3", None), ("f4", 8)])
    tracks = tracks_table(HOUR, d)
    assert tracks.column("frames").to_pylist() == [2, 1]
    assert failed(tracks, counts(GOOD_COUNTS), d, tracks) == set()


def test_tracks_that_miss_a_tracked_detection_fail():
    d = detections([("f1", 7), ("f2", 7), ("f4", 8)])
    tracks = tracks_table(HOUR, detections([("f1", 7), ("f2", 7)]))
    assert failed(tracks, counts(GOOD_COUNTS), d, tracks) == {"frames_match_detections"}


def test_a_track_id_reused_fails():
    d = detections([("f1", 7), ("f2", 7)])
    tracks = tracks_table(HOUR, d)
    car = tracks.set_column(tracks.schema.get_field_index("class_name"), "class_name", pa.array(["car"]))
    assert failed(tracks, counts(GOOD_COUNTS), d, pa.concat_tables([tracks, car])) == {"no_reused_track_id"}
    twice_in_a_frame = detections([("f1", 7), ("f1", 7)])
    assert "no_reused_track_id" in failed(tracks_table(HOUR, twice_in_a_frame), counts(GOOD_COUNTS),
                                          twice_in_a_frame, tracks_table(HOUR, twice_in_a_frame))


def test_crossings_beyond_the_objects_fail():
    d = detections([("f1", 7), ("f2", 7)])
    tracks = tracks_table(HOUR, d)
    net = [GOOD_COUNTS[0], {**GOOD_COUNTS[1], "crossed_in": 4, "crossed_out": 1}]
    assert failed(tracks, counts(net), d, tracks) == {"crossings_within_objects"}
    more_than_seen = [GOOD_COUNTS[0], {**GOOD_COUNTS[1], "unique_objects": 3, "crossed_in": 2}]
    assert failed(tracks, counts(more_than_seen), d, tracks) == {"crossings_within_objects"}
