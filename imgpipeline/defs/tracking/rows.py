"""Rows of the tracking tables from the stored hourly frames and detections (columns: defs/tables)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgpipeline.defs.tables import DETECTIONS, FRAMES, OBJECT_COUNTS_SCHEMA, TRACKED_COLUMNS, TRACKS_SCHEMA
from imgpipeline.defs.warehouse.builds import based_on
from imgpipeline.resources.storage import Storage
from imgpipeline.vision import counting
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.zones import Zones

FRAME_COLUMNS = ["source_id", "frame_id", "captured_at", "status", "width", "height"]
# In a stored hour of tracks: the detections' base build it was made under, and each source's latest
# detection it took in (JSON: source → milliseconds). While the base is the same, the rows after those
# are all it has not taken in yet (warehouse/builds.py).
TRACKED_BASE = b"imgpipeline.tracked_base"
# Stamped beside the base: stored tracks summarized by another version of this module's rules are made
# again from every detection, never merged with. Change it whenever a track's row is made differently.
TRACKS_RULES = "1"
TAKEN_UNTIL = b"imgpipeline.taken_until"
_TRACK_ORDER = [("source_id", "ascending"), ("track_id", "ascending")]


def tracks_table(hour: datetime, detections: pa.Table) -> pa.Table:
    """One row per track seen in the hour, from its confirmed detections: columnar, in (source, track)
    order; entry and exit from its first and last detection in (capture time, frame id) order."""
    seen = detections.filter(pc.is_valid(detections.column("track_id")))
    seen = seen.sort_by([*_TRACK_ORDER, ("captured_at", "ascending"), ("frame_id", "ascending")])
    starts, ends = _groups(seen)
    first, last = seen.take(starts), seen.take(ends)
    frames = np.diff(np.append(starts, seen.num_rows))
    confidence = np.maximum.reduceat(_floats(seen, "confidence"), starts) if len(starts) else np.empty(0)
    return _tracks(hour, first, first.column("captured_at"), last.column("captured_at"), frames, confidence,
                   *_bottom_centre(first), *_bottom_centre(last))


def tracks_added(hour: datetime, stored: pa.Table, added: pa.Table) -> pa.Table:
    """An hour's stored tracks with the tracks of detections added after them (each source's added
    detections all captured after its stored ones): a track in both keeps its first entry and class,
    takes the added part's exit, and sums its frames."""
    both = pa.concat_tables([stored.select(TRACKS_SCHEMA.names).cast(TRACKS_SCHEMA),
                             tracks_table(hour, added)])
    both = both.sort_by([*_TRACK_ORDER, ("first_seen", "ascending"), ("last_seen", "ascending")])
    starts, ends = _groups(both)
    first, last = both.take(starts), both.take(ends)
    frames = np.add.reduceat(both.column("frames").to_numpy(), starts) if len(starts) else np.empty(0)
    confidence = np.maximum.reduceat(_floats(both, "max_confidence"), starts) if len(starts) else np.empty(0)
    return _tracks(hour, first, first.column("first_seen"), last.column("last_seen"), frames, confidence,
                   first.column("entry_x"), first.column("entry_y"), last.column("exit_x"),
                   last.column("exit_y"))


def _groups(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """First and last row of each run of equal (source_id, track_id) in a table sorted by them."""
    n = table.num_rows
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    source, track = (table.column(c).combine_chunks() for c in ("source_id", "track_id"))
    changed = pc.or_(pc.not_equal(source.slice(1), source.slice(0, n - 1)),
                     pc.not_equal(track.slice(1), track.slice(0, n - 1)))
    starts = np.flatnonzero(changed.to_numpy(zero_copy_only=False)) + 1
    starts = np.concatenate([[0], starts]).astype(np.int64)
    return starts, np.append(starts[1:] - 1, n - 1)


def _floats(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy().astype(np.float64)


def _bottom_centre(boxes: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    x, y, w, h = (boxes.column(c).to_numpy().astype(np.float64) for c in ("x", "y", "w", "h"))
    return x + w / 2, y + h


def _tracks(hour, first: pa.Table, first_seen, last_seen, frames, confidence, entry_x, entry_y, exit_x,
            exit_y) -> pa.Table:
    n = first.num_rows
    return pa.table({
        "hour_start": pa.array([hour] * n, TRACKS_SCHEMA.field("hour_start").type),
        "source_id": first.column("source_id"), "track_id": first.column("track_id"),
        "class_name": first.column("class_name"), "first_seen": first_seen, "last_seen": last_seen,
        "frames": pa.array(frames, pa.int32()), "max_confidence": pa.array(confidence, pa.float64()),
        "entry_x": entry_x, "entry_y": entry_y, "exit_x": exit_x, "exit_y": exit_y,
    }, schema=TRACKS_SCHEMA)


def hour_tracks(hour: datetime, detections: pa.Table, stored: pa.Table | None) -> tuple[pa.Table, int]:
    """The hour's tracks, stamped with what they took in, and how many detection rows were read for
    them: only those added since the stored tracks when the detections are still of the base build they
    were made under, else all of them."""
    base = based_on(detections)
    stamp = f"{base}@{TRACKS_RULES}" if base else ""
    marks = taken_until(stored) if stored is not None and base and tracked_base(stored) == stamp else None
    if marks is not None and not _agrees(stored, detections, marks):
        marks = None  # the stored tracks took in rows these detections do not hold (runs that overlapped)
    if marks is None:
        tracks, read = tracks_table(hour, detections), detections.num_rows
    else:
        added = detections.filter(_after(detections, marks))
        tracks, read = tracks_added(hour, stored, added), added.num_rows
    ms = pa.table({"source_id": detections.column("source_id"), "ms": _milliseconds(detections)})
    latest = ms.group_by("source_id").aggregate([("ms", "max")])
    until = dict(zip(latest.column("source_id").to_pylist(), latest.column("ms_max").to_pylist(),
                     strict=True))
    return tracks.replace_schema_metadata({TRACKED_BASE: stamp.encode(),
                                           TAKEN_UNTIL: json.dumps(until).encode()}), read


def tracked_base(tracks: pa.Table) -> str | None:
    return (tracks.schema.metadata or {}).get(TRACKED_BASE, b"").decode() or None


def taken_until(tracks: pa.Table) -> dict[str, int] | None:
    """Each source's latest detection a stored hour of tracks took in (milliseconds), or None when not
    recorded or not readable."""
    try:
        marks = json.loads((tracks.schema.metadata or {}).get(TAKEN_UNTIL, b""))
    except ValueError:
        return None
    if not isinstance(marks, dict) or not all(
            type(v) is int and -(2**63) <= v < 2**63 for v in marks.values()):
        return None
    return marks


def _agrees(stored: pa.Table, detections: pa.Table, marks: dict[str, int]) -> bool:
    """Whether the stored tracks are made of exactly the detections up to their sources' marks: per source,
    their frames add up to the tracked detections captured at or before its mark. Two runs of an hour that
    overlapped can leave tracks of detections a later write dropped, or marks older than the tracks."""
    tracked = detections.filter(pc.is_valid(detections.column("track_id")))
    taken = tracked.filter(pc.invert(_after(tracked, marks)))
    have = _sums(taken.group_by("source_id").aggregate([("source_id", "count")]), "source_id_count")
    kept = _sums(stored.group_by("source_id").aggregate([("frames", "sum")]), "frames_sum")
    return have == kept


def _sums(table: pa.Table, column: str) -> dict[str, int]:
    return dict(zip(table.column("source_id").to_pylist(), table.column(column).to_pylist(), strict=True))


def _after(detections: pa.Table, marks: dict[str, int]) -> pa.Array:
    """Which detections were captured after their source's mark (all of a source without one)."""
    sources = pa.array(list(marks), pa.string())
    until = pa.array(list(marks.values()), pa.int64())
    at = pc.index_in(detections.column("source_id"), value_set=sources)
    mark = pc.take(until, at)
    return pc.fill_null(pc.greater(_milliseconds(detections), mark), True)


def _milliseconds(detections: pa.Table) -> pa.ChunkedArray:
    """Capture times as whole milliseconds since the epoch (as stored): marks compare exactly."""
    return pc.cast(detections.column("captured_at"), pa.int64())


def counted_frames(frames: pa.Table, detections: pa.Table, zones: Zones | None = None
                   ) -> dict[str, list[counting.CountedFrame]]:
    """Each source's detected frames in capture order with their confirmed (tracked) detections.

    Only frames that can change a count are read into Python: a source with no confirmed detection counts
    nothing, and of the frames with none (which only age a line's memory of the tracks not in them) as
    many in a row as it takes to forget every track (given `zones`: a line's `min_frames` + 1, at least 2;
    none for a source without lines): further ones change nothing."""
    detections = detections.select(TRACKED_COLUMNS).filter(pc.is_valid(detections.column("track_id")))
    frames = frames.select(FRAME_COLUMNS).filter(pc.and_(
        pc.equal(frames.column("status"), "detected"),
        pc.is_in(frames.column("source_id"), pc.unique(detections.column("source_id")))))
    if zones is not None:
        frames = frames.filter(_may_count(frames, detections, zones))
    found: dict[tuple[str, str], counting.CountedFrame] = {}
    for f in frames.to_pylist():
        found[f["source_id"], f["frame_id"]] = counting.CountedFrame(
            f["frame_id"], f["captured_at"].timestamp(), f["width"], f["height"]
        )
    for d in sorted(detections.to_pylist(), key=lambda d: d["detection_index"]):
        frame = found.get((d["source_id"], d["frame_id"]))
        if frame is not None:
            frame.tracked.append(
                Detection(track_id=d["track_id"], class_name=d["class_name"], confidence=d["confidence"],
                          box=(d["x"], d["y"], d["w"], d["h"]))
            )
    per_source: dict[str, list[counting.CountedFrame]] = defaultdict(list)
    for (source, _), frame in found.items():
        per_source[source].append(frame)
    return {s: sorted(fs, key=lambda f: (f.seconds, f.frame_id)) for s, fs in sorted(per_source.items())}


def _may_count(frames: pa.Table, detections: pa.Table, zones: Zones) -> np.ndarray:
    """Which frames counting must see: those with a confirmed detection, and of each run of frames
    without one (in capture order, per source and frame size: each size has lines of its own) the first
    few that age the lines' memory."""
    order = pc.sort_indices(frames, sort_keys=[("source_id", "ascending"), ("width", "ascending"),
                                               ("height", "ascending"), ("captured_at", "ascending"),
                                               ("frame_id", "ascending")]).to_numpy()
    n = len(order)
    if n == 0:
        return np.zeros(0, bool)
    ordered = frames.take(order)
    has = pc.is_in(_frame_keys(ordered), value_set=pc.unique(_frame_keys(detections))).to_numpy(
        zero_copy_only=False)
    group = np.zeros(n, bool)
    group[0] = True
    for column in ("source_id", "width", "height"):
        values = ordered.column(column).combine_chunks()
        # A size not recorded (null) starts a group of its own: more frames kept, never fewer.
        changed = pc.fill_null(pc.not_equal(values.slice(1), values.slice(0, n - 1)), True)
        group[1:] |= changed.to_numpy(zero_copy_only=False)
    index = np.arange(n)
    reset = np.maximum.accumulate(np.where(has | group, index, 0))
    in_run = index - reset - has[reset]  # place among the frames without a detection since the last reset
    sources = ordered.column("source_id").combine_chunks()
    names = pc.unique(sources)
    forget = pa.array([max((max(2, line.min_frames + 1) for line in zones.of(name).lines), default=0)
                       for name in names.to_pylist()], pa.int64())
    keep_empty = pc.take(forget, pc.index_in(sources, value_set=names)).to_numpy()
    needed = np.zeros(n, bool)
    needed[order] = has | (in_run < keep_empty)
    return needed


def _frame_keys(table: pa.Table) -> pa.ChunkedArray:
    """`source_id/frame_id` of each row: one string per frame (ids hold no `/`)."""
    return pc.binary_join_element_wise(table.column("source_id"), table.column("frame_id"), "/")


def object_counts_table(store: Storage, hour: datetime, zones: Zones) -> pa.Table:
    """The hour's counts per source and class, from the stored hours around it."""
    around = [hour - timedelta(hours=1), hour, hour + timedelta(hours=1)]
    frames = FRAMES.stored_hours(store, around, FRAME_COLUMNS)
    detections = DETECTIONS.stored_hours(store, around, TRACKED_COLUMNS)
    start, end = hour.timestamp(), (hour + timedelta(hours=1)).timestamp()
    rows = []
    for source, source_frames in counted_frames(frames, detections, zones).items():
        spec = zones.of(source)
        counts = counting.count(source_frames, zones, source, start, end)
        for row in counting.rows(counts, [line.name for line in spec.lines], [z.name for z in spec.zones]):
            rows.append({"hour_start": hour, "source_id": source, **row, "zones_sha256": zones.sha256})
    return pa.Table.from_pylist(rows, schema=OBJECT_COUNTS_SCHEMA)
