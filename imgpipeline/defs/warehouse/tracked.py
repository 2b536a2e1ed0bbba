"""Track ids of the warehouse's detections: an hour's frames as landed, tracked on from the previous
hour as stored, and the hours to track again when an earlier hour changed.

The hourly run calls `track_hour` so `detections.track_id` is written with the rest of the row;
tracking itself is `vision/tracking.py`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from imgpipeline.defs.hours import hour_path
from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.defs.tables import DETECTIONS, FRAMES, TRACKED_COLUMNS, TS
from imgpipeline.ingest.messages import parse_time
from imgpipeline.resources.storage import BadObject, Storage
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.tracking import TrackedFrame, TrackerSettings, assign, frame_rate

# (source_id, frame_id, detection_index) → track id
TrackIds = dict[tuple[str, str, int], int]


def _seconds(moment) -> float:
    return (parse_time(moment) if isinstance(moment, str) else moment).timestamp()


def landed_frames(records: list[LandingRecord]) -> dict[str, list[TrackedFrame]]:
    """Each source's detected frames, in capture order, from the hour's landing records."""
    frames: dict[str, list[TrackedFrame]] = defaultdict(list)
    for r in records:
        if r.status != "detected":
            continue  # nothing was observed: the tracker is not told anything
        observations = [
            Detection(index=i, class_name=d["class_name"], confidence=d["confidence"], box=tuple(d["box"]))
            for i, d in enumerate(r.detections or [])
        ]
        frames[r.source_id].append(TrackedFrame(r.frame_id, _seconds(r.captured_at), observations))
    return _ordered(frames)


def stored_frames(frames: pa.Table, detections: pa.Table, since: datetime) -> dict[str, list[TrackedFrame]]:
    """Each source's detected frames captured from `since` on, from stored hourly tables, with the
    track ids they were given."""
    # Only the rows from `since` on become Python objects: the rest of a long hour is never walked.
    frames, detections = (t.filter(pc.greater_equal(t.column("captured_at"), pa.scalar(since, TS)))
                          for t in (frames, detections))
    found: dict[tuple[str, str], TrackedFrame] = {}
    for row in frames.select(["source_id", "frame_id", "captured_at", "status"]).to_pylist():
        if row["status"] == "detected":
            found[row["source_id"], row["frame_id"]] = TrackedFrame(
                row["frame_id"], row["captured_at"].timestamp(), []
            )
    for d in detections.select(TRACKED_COLUMNS).to_pylist():
        frame = found.get((d["source_id"], d["frame_id"]))
        if frame is not None:
            frame.observations.append(
                Detection(index=d["detection_index"], class_name=d["class_name"], confidence=d["confidence"],
                          box=(d["x"], d["y"], d["w"], d["h"]))
            )
            frame.recorded[d["detection_index"]] = d["track_id"]
    per_source: dict[str, list[TrackedFrame]] = defaultdict(list)
    for (source, _), frame in found.items():
        frame.observations.sort(key=lambda o: o.index)
        per_source[source].append(frame)
    return _ordered(per_source)


def _ordered(frames: dict[str, list[TrackedFrame]]) -> dict[str, list[TrackedFrame]]:
    return {
        source: sorted(fs, key=lambda f: (f.seconds, f.frame_id)) for source, fs in sorted(frames.items())
    }


def track_hour(store: Storage, hour: datetime, records: list[LandingRecord],
               settings: TrackerSettings, previous_key: str | None = None) -> tuple[TrackIds, str]:
    """Track ids of an hour's detections, continuing the tracks of the previous hour as stored; and the
    digest of the previous hour's detections they continue from ("none" when it is not stored).
    `previous_key`: the previous hour's detections are that file instead (a model's re-detections:
    `defs/laboratory`); its frames are the warehouse's."""
    previous = hour - timedelta(hours=1)
    landed = landed_frames(records)
    windows = replay_windows(landed, settings)
    replay: dict[str, list[TrackedFrame]] = {}
    seed = "none"
    frames_key, detections_key = FRAMES.hour_key(previous), previous_key or DETECTIONS.hour_key(previous)
    if store.exists(frames_key) and store.exists(detections_key):
        stored = DETECTIONS.read(store, detections_key)
        seed = content_digest(stored)
        if windows:
            since = hour - timedelta(seconds=max(windows.values()))
            replay = stored_frames(FRAMES.read(store, frames_key), stored, since)
    starts = {source: hour.timestamp() for source in landed}
    return assigned(landed, replay, starts, windows, settings), seed


def track_more(store: Storage, hour: datetime, frames: pa.Table, detections: pa.Table,
               landed: dict[str, list[TrackedFrame]], settings: TrackerSettings) -> TrackIds:
    """Track ids of frames added to an hour after those of its stored tables (each source's new frames
    all captured after its stored ones), continuing the stored tracks: the stored end of the hour (and
    of the hour before, when the replay reaches back into it) is replayed with its recorded ids."""
    windows = replay_windows(landed, settings)
    if not windows:
        return {}
    starts = {source: frames_[0].seconds for source, frames_ in landed.items()}
    since = datetime.fromtimestamp(min(starts[s] - windows[s] for s in landed), UTC)
    tables = [(frames, detections)]
    previous = hour - timedelta(hours=1)
    if since < hour and all(store.exists(t.hour_key(previous)) for t in (FRAMES, DETECTIONS)):
        tables.insert(0, (FRAMES.read(store, FRAMES.hour_key(previous)),
                          DETECTIONS.read(store, DETECTIONS.hour_key(previous))))
    replay: dict[str, list[TrackedFrame]] = defaultdict(list)
    for stored_f, stored_d in tables:
        for source, found in stored_frames(stored_f, stored_d, since).items():
            replay[source].extend(found)
    return assigned(landed, replay, starts, windows, settings)


def replay_windows(landed: dict[str, list[TrackedFrame]], settings: TrackerSettings) -> dict[str, float]:
    """Seconds of stored frames to replay before each source's landed ones. A source with one frame
    says nothing of its rate: a whole hour is replayed."""
    return {source: settings.replay_for(frame_rate(f.seconds for f in frames)) if len(frames) > 1
            else 3600.0 for source, frames in landed.items()}


def assigned(landed: dict[str, list[TrackedFrame]], replay: dict[str, list[TrackedFrame]],
             starts: dict[str, float], windows: dict[str, float], settings: TrackerSettings) -> TrackIds:
    ids: TrackIds = {}
    for source, frames in landed.items():
        since = starts[source] - windows[source]
        tail = [f for f in replay.get(source, []) if f.seconds >= since]
        for (frame_id, index), track_id in assign(tail, frames, settings).items():
            ids[source, frame_id, index] = track_id
    return ids


# -- hours to track again ----------------------------------------------------------------------
# Each hour's detections record, in their Parquet's metadata, the digest of the previous hour's
# detections they continued from. When an hour is made again and its detections come out different,
# the hour after it is marked under `warehouse/retrack/` with the new digest; retrack_sensor makes that
# hour again, which clears the mark and may mark the next. An hour that comes out the same ends it.

RETRACK = "warehouse/retrack"
SEEDED_FROM = b"imgpipeline.seeded_from"


def content_digest(detections: pa.Table) -> str:
    """sha256 of a detections table's rows and columns (not its metadata, not its file's bytes)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, detections.schema.remove_metadata()) as writer:
        writer.write_table(detections.replace_schema_metadata(None))
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def with_seed(detections: pa.Table, seed: str) -> pa.Table:
    return detections.replace_schema_metadata({SEEDED_FROM: seed.encode()})


def seeded_from(detections: pa.Table) -> str | None:
    return (detections.schema.metadata or {}).get(SEEDED_FROM, b"").decode() or None


def retrack_key(hour: datetime) -> str:
    return f"{RETRACK}/{hour_path(hour)}"


def clear_mark(store: Storage, hour: datetime, seed: str) -> None:
    """The hour was made from what its mark asked for: the mark goes (a newer mark stays; a mark another
    run cleared meanwhile is gone already)."""
    key = retrack_key(hour)
    try:
        if store.get(key).decode() == seed:
            store.delete(key)
    except BadObject:
        pass


def unmark(store: Storage, hour: datetime) -> None:
    """The hour's mark goes whatever it asks: its day's landing was retired, so its tables are kept as
    built and no run makes it again."""
    store.delete(retrack_key(hour))


def previous_digest(store: Storage, hour: datetime) -> str:
    """The digest of the hour before's stored detections, which `hour` should continue; "none" when that
    hour is not stored (as track_hour seeds it)."""
    previous = hour - timedelta(hours=1)
    if all(store.exists(t.hour_key(previous)) for t in (FRAMES, DETECTIONS)):
        return content_digest(DETECTIONS.read(store, DETECTIONS.hour_key(previous)))
    return "none"


def continues(store: Storage, hour: datetime, digest: str | None = None) -> bool:
    """The hour is stored and continues the hour before as stored now (or `digest`, its digest)."""
    key = DETECTIONS.hour_key(hour)
    if not store.exists(key):
        return False
    return (seeded_from(DETECTIONS.read(store, key)) or "none") == (digest or previous_digest(store, hour))


def mark_if_stale(store: Storage, hour: datetime) -> datetime | None:
    """Mark `hour` to be tracked again when its stored detections continued other detections of the hour
    before than those stored now; returns it when marked.

    A run checks this, after its writes, for the hour after its range (its last hour changed) and for its
    first hour made whole (the hour before may have been written by another run meanwhile). Two runs of
    adjacent hours at once each write, then look at the other's hour: whichever looks last sees the
    other's write, so the later hour is marked whatever the order (the store reads what was last
    written: local disk and S3 do)."""
    if not store.exists(DETECTIONS.hour_key(hour)):
        return None
    now = previous_digest(store, hour)
    if continues(store, hour, now):
        clear_mark(store, hour, now)
        return None
    store.put(retrack_key(hour), now.encode())
    return hour


def marked_hours(store: Storage) -> list[tuple[datetime, str]]:
    """(hour, the digest it should continue from) of every hour marked to be tracked again; keys that
    are not marks, or marks gone meanwhile, are passed over."""
    found = []
    for key in store.list(f"{RETRACK}/"):
        try:
            day, hour = key.removeprefix(f"{RETRACK}/").split("/")
            moment = datetime.strptime(f"{day} {hour}", "dt=%Y-%m-%d hour=%H").replace(tzinfo=UTC)
            found.append((moment, store.get(key).decode()))
        except Exception:  # noqa: BLE001 (a folder object, a stray key, a mark cleared since listing)
            continue
    return sorted(found)

