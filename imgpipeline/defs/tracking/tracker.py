"""The tracker's inputs from the warehouse: an hour's frames as landed, the previous hour as stored.

The warehouse's hourly run calls `track_hour` so `detections.track_id` is written with the rest of
the row; tracking itself is `vision/tracking.py`.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import pyarrow as pa

from imgpipeline.defs.tracking.tables import DETECTION_COLUMNS
from imgpipeline.defs.warehouse import tables as wh
from imgpipeline.ingest.messages import parse_time
from imgpipeline.vision.tracking import Observation, TrackedFrame, TrackerSettings, assign, frame_rate

# (source_id, frame_id, detection_index) → track id
TrackIds = dict[tuple[str, str, int], int]


def _seconds(moment) -> float:
    return (parse_time(moment) if isinstance(moment, str) else moment).timestamp()


def landed_frames(records: list[dict]) -> dict[str, list[TrackedFrame]]:
    """Each source's detected frames, in capture order, from the hour's landing records."""
    frames: dict[str, list[TrackedFrame]] = defaultdict(list)
    for r in records:
        if r.get("status") != "detected":
            continue  # nothing was observed: the tracker is not told anything
        observations = [
            Observation(i, d["class_name"], d["confidence"], tuple(d["box"]))
            for i, d in enumerate(r.get("detections") or [])
        ]
        frames[r["source_id"]].append(TrackedFrame(r["frame_id"], _seconds(r["captured_at"]), observations))
    return _ordered(frames)


def stored_frames(frames: pa.Table, detections: pa.Table, since: datetime) -> dict[str, list[TrackedFrame]]:
    """Each source's detected frames captured from `since` on, from stored hourly tables, with the
    track ids they were given."""
    cutoff = since.timestamp()
    found: dict[tuple[str, str], TrackedFrame] = {}
    for row in frames.select(["source_id", "frame_id", "captured_at", "status"]).to_pylist():
        if row["status"] == "detected" and row["captured_at"].timestamp() >= cutoff:
            found[row["source_id"], row["frame_id"]] = TrackedFrame(
                row["frame_id"], row["captured_at"].timestamp(), []
            )
    for d in detections.select(DETECTION_COLUMNS).to_pylist():
        frame = found.get((d["source_id"], d["frame_id"]))
        if frame is not None:
            frame.observations.append(
                Observation(
                    d["detection_index"], d["class_name"], d["confidence"], (d["x"], d["y"], d["w"], d["h"])
                )
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


def track_hour(store, hour: datetime, records: list[dict], settings: TrackerSettings) -> TrackIds:
    """Track ids of an hour's detections, continuing the tracks of the previous hour as stored."""
    previous = hour - timedelta(hours=1)
    landed = landed_frames(records)
    windows = {source: settings.replay_for(frame_rate(f.seconds for f in frames))
               for source, frames in landed.items()}
    replay: dict[str, list[TrackedFrame]] = {}
    if windows and store.exists(wh.hourly_key("frames", previous)) and store.exists(
            wh.hourly_key("detections", previous)):
        replay = stored_frames(
            wh.from_parquet(store.get(wh.hourly_key("frames", previous))),
            wh.from_parquet(store.get(wh.hourly_key("detections", previous))),
            since=hour - timedelta(seconds=max(windows.values())),
        )
    ids: TrackIds = {}
    for source, frames in landed.items():
        since = hour.timestamp() - windows[source]
        tail = [f for f in replay.get(source, []) if f.seconds >= since]
        for (frame_id, index), track_id in assign(tail, frames, settings).items():
            ids[source, frame_id, index] = track_id
    return ids
