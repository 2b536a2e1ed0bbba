"""Counting reads only the frames that can change a count: the counts of an hour come out the same as
from every frame, on scenes where tracks cross lines back and forth, pause out of sight for runs of empty
frames of every length, and two frame sizes interleave (each size has lines of its own)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from imgpipeline.defs.tables import DETECTIONS, FRAMES, TRACKED_COLUMNS
from imgpipeline.defs.tracking.rows import FRAME_COLUMNS, counted_frames
from imgpipeline.vision import counting, zones

START = datetime(2026, 11, 20, 10, 50, tzinfo=UTC)
HOUR = datetime(2026, 11, 20, 11, tzinfo=UTC)
ZONES = b"""
sources:
  cam-a:
    lines:
      - {name: door, start: [320, 0], end: [320, 480], min_frames: %d}
      - {name: road, start: [0, 240], end: [640, 240]}
    zones: [{name: yard, polygon: [[0, 0], [300, 0], [300, 300], [0, 300]]}]
  cam-b:
    zones: [{name: yard, polygon: [[0, 0], [300, 0], [300, 300], [0, 300]]}]
"""


def scene(seed: int) -> tuple[pa.Table, pa.Table]:
    """Frames of three cameras over 20 minutes around 11:00 (cam-c sees nothing), with tracked objects
    wandering across the lines and vanishing for a while."""
    rnd = random.Random(seed)
    frames, detections = [], []
    for source in ("cam-a", "cam-b", "cam-c"):
        walkers = {n: [rnd.randrange(40, 600), rnd.randrange(40, 440)] for n in range(1, 5)}
        hidden = {n: 0 for n in walkers}
        for i in range(1200):
            when = START + timedelta(seconds=i, milliseconds=rnd.randrange(0, 999))
            width, height = (640, 480) if rnd.random() < 0.8 else (1280, 720)
            frame_id = f"{source}-{i:05d}"
            frames.append({"source_id": source, "frame_id": frame_id, "captured_at": when,
                           "status": "detected" if rnd.random() < 0.97 else "skipped_dark",
                           "width": width, "height": height})
            if source == "cam-c":
                continue
            index = 0
            for track, position in walkers.items():
                if hidden[track]:
                    hidden[track] -= 1
                    continue
                if rnd.random() < 0.08:
                    hidden[track] = rnd.choice([1, 2, 3, 5, 8, 30, 200, 400, 600])
                position[0] = min(620, max(20, position[0] + rnd.randrange(-60, 61)))
                position[1] = min(460, max(20, position[1] + rnd.randrange(-40, 41)))
                confirmed = track if rnd.random() < 0.9 else None
                detections.append({"source_id": source, "frame_id": frame_id, "captured_at": when,
                                   "detection_index": index, "track_id": confirmed,
                                   "class_name": "person" if track % 2 else "car", "confidence": 0.8,
                                   "x": position[0] - 10, "y": position[1] - 30, "w": 20, "h": 30})
                index += 1
    schema = pa.schema([FRAMES.schema.field(c) for c in FRAME_COLUMNS])
    tracked_schema = pa.schema([DETECTIONS.schema.field(c) for c in TRACKED_COLUMNS])
    return pa.Table.from_pylist(frames, schema), pa.Table.from_pylist(detections, tracked_schema)


def counts_of(per_source: dict, spec: zones.Zones) -> dict:
    start, end = HOUR.timestamp(), (HOUR + timedelta(hours=1)).timestamp()
    found = {}
    for source, frames in per_source.items():
        lines = [line.name for line in spec.of(source).lines]
        areas = [zone.name for zone in spec.of(source).zones]
        found[source] = counting.rows(counting.count(frames, spec, source, start, end), lines, areas)
    return found


@pytest.mark.parametrize("seed, min_frames", [(1, 1), (2, 2), (3, 4), (4, 9)])
def test_the_frames_counting_reads_count_as_every_frame_does(seed, min_frames):
    spec = zones.parse(ZONES % min_frames)
    frames, detections = scene(seed)
    every, needed = counted_frames(frames, detections), counted_frames(frames, detections, spec)
    found = counts_of(needed, spec)
    assert found == counts_of(every, spec)
    # Frames without a confirmed detection are left out but for a few after each one with.
    assert sum(map(len, needed.values())) < 0.8 * sum(map(len, every.values()))
    crossings = sum(r["crossed_in"] + r["crossed_out"] for r in found["cam-a"] if r["kind"] == "line")
    assert crossings > 0 and any(r["kind"] == "zone" and r["visits"] for r in found["cam-b"])
    assert "cam-c" not in needed  # a camera that saw nothing counts nothing


def test_frames_whose_size_was_not_recorded_are_kept_not_refused():
    """Rows written before frame sizes were recorded (or by hand) have none: such frames start a group of
    their own and are read, never dropped, and counting does not fail on them."""
    spec = zones.parse(ZONES % 2)
    frames, detections = scene(5)
    rows = frames.to_pylist()
    for row in rows[::7]:
        row["width"] = row["height"] = None
    frames = pa.Table.from_pylist(rows, frames.schema)
    needed = counted_frames(frames, detections, spec)
    kept = {f.frame_id for fs in needed.values() for f in fs}
    detected = {r["frame_id"] for r in rows if r["status"] == "detected"}
    confirmed = {d["frame_id"] for d in detections.to_pylist() if d["track_id"] is not None}
    assert confirmed & detected <= kept
    # cam-a has lines: a frame of no recorded size starts a group, and is read even with nothing in it.
    unsized = {r["frame_id"] for r in rows[::7] if r["status"] == "detected" and r["source_id"] == "cam-a"}
    assert unsized and unsized <= kept
