"""Asset checks of the tracking tables: pure functions over stored tables, reported as asset checks."""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from imgpipeline.defs.tables import OBJECT_COUNTS_SCHEMA, TRACKS_SCHEMA
from imgpipeline.defs.tables.checks import SCHEMA_AS_DECLARED, schema_problems

CHECKS = {
    "tracks": {
        "schema_as_declared": SCHEMA_AS_DECLARED,
        "frames_match_detections": "The hour's tracks' frames add up to its detections that have a track id.",
        "no_reused_track_id": "Within a source and day a track id is one object: one class, hours that "
        "follow each other in time, at most one detection per frame.",
    },
    "object_counts": {
        "schema_as_declared": SCHEMA_AS_DECLARED,
        "crossings_within_objects": "Per line and class, crossings in minus crossings out is never more "
        "than the distinct objects that crossed (nor out minus in), and those are never more than the "
        "class's distinct objects of the hour.",
    },
}


def check_hour(
    key: str, tracks: pa.Table, counts: pa.Table, detections: pa.Table, day_tracks: pa.Table, failures: dict
) -> None:
    """Record what is wrong with one stored hour of tracks and object counts under its partition key."""
    if problems := schema_problems(tracks, TRACKS_SCHEMA):
        failures["tracks", "schema_as_declared"][key] = problems
    if problems := schema_problems(counts, OBJECT_COUNTS_SCHEMA):
        failures["object_counts", "schema_as_declared"][key] = problems
    tracked = detections.num_rows - detections.column("track_id").null_count
    if (framed := pc.sum(tracks.column("frames")).as_py() or 0) != tracked:
        failures["tracks", "frames_match_detections"][key] = (
            f"tracks' frames {framed}, tracked detections {tracked}"
        )
    if problems := reused_ids(day_tracks, detections):
        failures["tracks", "no_reused_track_id"][key] = problems[:20]
    if problems := crossing_excess(counts):
        failures["object_counts", "crossings_within_objects"][key] = problems[:20]


def reused_ids(day_tracks: pa.Table, detections: pa.Table) -> list[str]:
    """Track ids that stand for more than one object in a day's tracks or an hour's detections."""
    problems = []
    rows: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in day_tracks.select(
        ["source_id", "track_id", "class_name", "first_seen", "last_seen"]
    ).to_pylist():
        rows[row["source_id"], row["track_id"]].append(row)
    for (source, track), seen in sorted(rows.items()):
        if len({r["class_name"] for r in seen}) > 1:
            problems.append(f"{source}/{track}: classes {sorted({r['class_name'] for r in seen})}")
        seen.sort(key=lambda r: r["first_seen"])
        if any(b["first_seen"] <= a["last_seen"] for a, b in zip(seen, seen[1:], strict=False)):
            problems.append(f"{source}/{track}: hours overlap in time")
    keys = ["source_id", "frame_id", "track_id"]
    tracked = detections.select(keys).filter(pc.is_valid(detections.column("track_id")))
    per_frame = tracked.group_by(keys).aggregate([([], "count_all")])
    twice = per_frame.filter(pc.greater(per_frame.column("count_all"), 1)).to_pylist()
    problems += [f"{d['source_id']}/{d['track_id']}: {d['count_all']} detections in frame {d['frame_id']}"
                 for d in sorted(twice, key=lambda d: (d["source_id"], d["frame_id"], d["track_id"]))]
    return problems


def crossing_excess(counts: pa.Table) -> list[str]:
    """Line rows whose net crossings exceed the objects that crossed, or whose crossers exceed the
    class's objects in the hour."""
    rows = counts.to_pylist()
    objects = {(r["hour_start"], r["source_id"], r["class_name"]): r["unique_objects"]
               for r in rows if r["kind"] == "objects"}
    problems = []
    for row in rows:
        if row["kind"] != "line":
            continue
        where = f"{row['source_id']} {row['class_name']} line {row['name']}"
        if abs(row["crossed_in"] - row["crossed_out"]) > row["unique_objects"]:
            problems.append(f"{where}: in {row['crossed_in']}, out {row['crossed_out']}, "
                            f"objects that crossed {row['unique_objects']}")
        seen = objects.get((row["hour_start"], row["source_id"], row["class_name"]), 0)
        if row["unique_objects"] > seen:
            problems.append(f"{where}: {row['unique_objects']} objects crossed, {seen} seen in the hour")
    return problems
