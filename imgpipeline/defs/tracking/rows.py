"""Rows of the tracking tables from the stored hourly frames and detections (columns: defs/tables)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import pyarrow as pa

from imgpipeline.defs.tables import DETECTIONS, FRAMES, OBJECT_COUNTS_SCHEMA, TRACKED_COLUMNS, TRACKS_SCHEMA
from imgpipeline.vision import counting
from imgpipeline.vision.zones import Zones

FRAME_COLUMNS = ["source_id", "frame_id", "captured_at", "status", "width", "height"]
def tracks_table(hour: datetime, detections: pa.Table) -> pa.Table:
    """One row per track seen in the hour, from its confirmed detections."""
    by_track: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for d in detections.to_pylist():
        if d["track_id"] is not None:
            by_track[d["source_id"], d["track_id"]].append(d)
    rows = []
    for (source, track_id), seen in sorted(by_track.items()):
        seen.sort(key=lambda d: (d["captured_at"], d["frame_id"]))
        first, last = seen[0], seen[-1]
        rows.append(
            {
                "hour_start": hour,
                "source_id": source,
                "track_id": track_id,
                "class_name": first["class_name"],
                "first_seen": first["captured_at"],
                "last_seen": last["captured_at"],
                "frames": len(seen),
                "max_confidence": max(d["confidence"] for d in seen),
                "entry_x": first["x"] + first["w"] / 2,
                "entry_y": float(first["y"] + first["h"]),
                "exit_x": last["x"] + last["w"] / 2,
                "exit_y": float(last["y"] + last["h"]),
            }
        )
    return pa.Table.from_pylist(rows, schema=TRACKS_SCHEMA)


def counted_frames(frames: pa.Table, detections: pa.Table) -> dict[str, list[counting.CountedFrame]]:
    """Each source's detected frames in capture order with their confirmed (tracked) detections."""
    found: dict[tuple[str, str], counting.CountedFrame] = {}
    for f in frames.select(FRAME_COLUMNS).to_pylist():
        if f["status"] == "detected":
            found[f["source_id"], f["frame_id"]] = counting.CountedFrame(
                f["frame_id"], f["captured_at"].timestamp(), f["width"], f["height"]
            )
    for d in sorted(detections.select(TRACKED_COLUMNS).to_pylist(), key=lambda d: d["detection_index"]):
        frame = found.get((d["source_id"], d["frame_id"]))
        if frame is not None and d["track_id"] is not None:
            frame.tracked.append(
                counting.Tracked(
                    d["track_id"], d["class_name"], d["confidence"], (d["x"], d["y"], d["w"], d["h"])
                )
            )
    per_source: dict[str, list[counting.CountedFrame]] = defaultdict(list)
    for (source, _), frame in found.items():
        per_source[source].append(frame)
    return {s: sorted(fs, key=lambda f: (f.seconds, f.frame_id)) for s, fs in sorted(per_source.items())}


def object_counts_table(store, hour: datetime, zones: Zones) -> pa.Table:
    """The hour's counts per source and class, from the stored hours around it."""
    around = [hour - timedelta(hours=1), hour, hour + timedelta(hours=1)]
    frames = FRAMES.stored_hours(store, around, FRAME_COLUMNS)
    detections = DETECTIONS.stored_hours(store, around, TRACKED_COLUMNS)
    start, end = hour.timestamp(), (hour + timedelta(hours=1)).timestamp()
    rows = []
    for source, source_frames in counted_frames(frames, detections).items():
        spec = zones.of(source)
        counts = counting.count(source_frames, zones, source, start, end)
        for row in counting.rows(counts, [line.name for line in spec.lines], [z.name for z in spec.zones]):
            rows.append({"hour_start": hour, "source_id": source, **row, "zones_sha256": zones.sha256})
    return pa.Table.from_pylist(rows, schema=OBJECT_COUNTS_SCHEMA)
