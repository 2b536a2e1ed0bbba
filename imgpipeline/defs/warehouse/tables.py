"""Warehouse tables: their schemas (docs/contracts.md), their Parquet files, and the rows built from
landing records.

Hourly tables live at `warehouse/<table>/dt=YYYY-MM-DD/hour=HH/part-0.parquet`, the daily
summary at `warehouse/daily_summary/dt=YYYY-MM-DD/part-0.parquet`, on the local folder or S3 alike.
"""

from __future__ import annotations

import io
import re
from datetime import date, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from imgpipeline.defs.hours import hour_path
from imgpipeline.defs.streaming.landing import processed
from imgpipeline.ingest.messages import parse_time

TS = pa.timestamp("ms", tz="UTC")
# What produced a frame's detections, on every row: results of different models, engines or
# precisions are never summed together unnoticed.
IDENTITY = ("model", "model_sha256", "engine", "precision")
_IDENTITY_FIELDS = [(name, pa.string()) for name in IDENTITY]

FRAMES_SCHEMA = pa.schema([
    ("frame_id", pa.string()), ("source_id", pa.string()), ("file_name", pa.string()),
    ("uri", pa.string()), ("sha256", pa.string()), ("content_type", pa.string()),
    ("captured_at", TS), ("ingested_at", TS), ("processed_at", TS),
    ("status", pa.string()), ("error", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("bytes", pa.int64()),
    ("brightness", pa.float64()), ("contrast", pa.float64()), ("sharpness", pa.float64()),
    ("object_count", pa.int32()), *_IDENTITY_FIELDS,
    ("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()), ("run_id", pa.string()),
])

DETECTIONS_SCHEMA = pa.schema([
    ("frame_id", pa.string()), ("source_id", pa.string()), ("captured_at", TS),
    ("detection_index", pa.int32()), ("class_id", pa.int32()), ("class_name", pa.string()),
    ("confidence", pa.float64()),
    # 1 for the most confident detection of its class in the frame, 2 for the next, …
    ("class_rank", pa.int32()),
    ("x", pa.int32()), ("y", pa.int32()), ("w", pa.int32()), ("h", pa.int32()),
    # The object this detection belongs to (vision/tracking.py); null until its track is confirmed.
    ("track_id", pa.int64()), *_IDENTITY_FIELDS,
])

DAILY_SUMMARY_SCHEMA = pa.schema([
    ("day", pa.date32()), ("source_id", pa.string()), *_IDENTITY_FIELDS, ("class_name", pa.string()),
    ("frames", pa.int64()), ("frames_with_class", pa.int64()), ("objects", pa.int64()),
    ("unique_objects", pa.int64()),
    ("mean_confidence", pa.float64()), ("max_confidence", pa.float64()),
    ("objects_per_hour", pa.list_(pa.int64())),
    ("mean_brightness", pa.float64()), ("p10_brightness", pa.float64()),
    ("p50_brightness", pa.float64()), ("p90_brightness", pa.float64()),
    ("typical_size", pa.string()), ("median_bytes", pa.float64()),
    ("dark_share", pa.float64()), ("error_share", pa.float64()),
    ("shed_share", pa.float64()),
])

# (`hour_start`, not `hour`: the hive path's `hour=HH` is a column of the views already.)
# One row per track per hour. Entry and exit are the bottom centre of its first and last box of the hour.
TRACKS_SCHEMA = pa.schema([
    ("hour_start", TS), ("source_id", pa.string()), ("track_id", pa.int64()), ("class_name", pa.string()),
    ("first_seen", TS), ("last_seen", TS), ("frames", pa.int32()), ("max_confidence", pa.float64()),
    ("entry_x", pa.float64()), ("entry_y", pa.float64()), ("exit_x", pa.float64()), ("exit_y", pa.float64()),
])

# Per hour × source × class: `objects` rows (distinct objects), `line` rows (crossings per line),
# `zone` rows (visits and dwell per zone); zones_sha256 names the zones file they were counted with.
OBJECT_COUNTS_SCHEMA = pa.schema([
    ("hour_start", TS), ("source_id", pa.string()), ("class_name", pa.string()),
    ("kind", pa.string()), ("name", pa.string()), ("unique_objects", pa.int64()),
    ("crossed_in", pa.int64()), ("crossed_out", pa.int64()),
    ("visits", pa.int64()), ("dwell_p50_s", pa.float64()), ("dwell_p95_s", pa.float64()),
    ("dwell_max_s", pa.float64()), ("zones_sha256", pa.string()),
])

# One row per alert, in the hour it fired: its number (stable, never reused), the rule, what it is about,
# and its evidence (frames, track, the annotated image and crop under `annotated/`).
ALERTS_SCHEMA = pa.schema([
    ("number", pa.int64()), ("fired_at", TS), ("hour_start", TS), ("source_id", pa.string()),
    ("rule", pa.string()), ("kind", pa.string()), ("severity", pa.string()), ("detail", pa.string()),
    ("frame_id", pa.string()), ("frame_ids", pa.list_(pa.string())), ("track_id", pa.int64()),
    ("class_name", pa.string()), ("detection_index", pa.int32()), ("annotated_key", pa.string()),
    ("crop_key", pa.string()), ("alert_key", pa.string()), ("rules_sha256", pa.string()),
])

SCHEMAS = {"frames": FRAMES_SCHEMA, "detections": DETECTIONS_SCHEMA, "daily_summary": DAILY_SUMMARY_SCHEMA,
           "tracks": TRACKS_SCHEMA, "object_counts": OBJECT_COUNTS_SCHEMA, "alerts": ALERTS_SCHEMA}


def hourly_key(table: str, hour: datetime) -> str:
    return f"warehouse/{table}/{hour_path(hour)}/part-0.parquet"


def counts_key(hour: datetime, zones_sha256: str | None) -> str:
    """object_counts of an hour counted with one zones file: counts made with an earlier file stay
    beside them, so old and new counts can be compared."""
    return f"warehouse/object_counts/{hour_path(hour)}/zones-{(zones_sha256 or 'none')[:12]}.parquet"


def daily_key(table: str, day: date) -> str:
    return f"warehouse/{table}/dt={day.isoformat()}/part-0.parquet"


# The shape of every key the three functions above write: what a reader of the warehouse accepts.
_DAY, _HOUR = "dt=[0-9]{4}-[0-9]{2}-[0-9]{2}", "hour=[0-9]{2}"
_KEY_SHAPES = {
    "daily_summary": f"{_DAY}/part-0\\.parquet",
    "object_counts": f"{_DAY}/{_HOUR}/zones-(?:[0-9a-f]{{12}}|none)\\.parquet",
}
_HOURLY_SHAPE = f"{_DAY}/{_HOUR}/part-0\\.parquet"


def is_table_key(table: str, key: str) -> bool:
    """Whether `key` is one of `table`'s Parquet files exactly as hourly_key, counts_key and daily_key
    name them (nothing else under the table's folder is read)."""
    shape = _KEY_SHAPES.get(table, _HOURLY_SHAPE)
    return re.fullmatch(f"warehouse/{re.escape(table)}/{shape}", key) is not None


def to_parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def from_parquet(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def concat(tables: list[pa.Table], table_name: str) -> pa.Table:
    return pa.concat_tables(tables) if tables else SCHEMAS[table_name].empty_table()


# -- landing records → hourly tables -------------------------------------------------------

def latest_per_frame(records: list[dict]) -> list[dict]:
    """One record per frame (source_id, frame_id): a processed record over an error (or out of range)
    whatever their order, then the latest processing; ordered by capture time, source and id."""
    best: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: (processed(r), r["processed_at"] or "", r["topic"] or "",
                                                 r["partition"] or 0, r["offset"] or 0)):
        best[record.get("source_id"), record["frame_id"]] = record
    return sorted(best.values(), key=lambda r: (r["captured_at"], r.get("source_id") or "", r["frame_id"]))


def _time(text: str | None) -> datetime | None:
    return parse_time(text) if text else None


def frames_table(records: list[dict]) -> pa.Table:
    rows = []
    for r in records:
        uri = r.get("uri")
        rows.append({
            **{name: r.get(name) for name in FRAMES_SCHEMA.names},
            "file_name": uri.rsplit("/", 1)[-1] if uri else None,
            "captured_at": _time(r.get("captured_at")),
            "ingested_at": _time(r.get("ingested_at")),
            "processed_at": _time(r.get("processed_at")),
        })
    return pa.Table.from_pylist(rows, schema=FRAMES_SCHEMA)


def detections_table(records: list[dict], track_ids: dict[tuple[str, str, int], int] | None = None
                     ) -> pa.Table:
    """One row per detection; `track_ids` ((source, frame, detection index) → id) fills track_id."""
    track_ids = track_ids or {}
    rows = []
    for r in records:
        detections = r.get("detections") or []
        order = sorted(range(len(detections)), key=lambda i: -detections[i]["confidence"])
        ranks, seen = {}, {}
        for i in order:
            name = detections[i]["class_name"]
            seen[name] = ranks[i] = seen.get(name, 0) + 1
        for index, d in enumerate(detections):
            x, y, w, h = d["box"]
            rows.append({
                "frame_id": r["frame_id"], "source_id": r["source_id"],
                "captured_at": _time(r["captured_at"]), "detection_index": index,
                "class_id": d["class_id"], "class_name": d["class_name"],
                "confidence": d["confidence"], "class_rank": ranks[index],
                "x": x, "y": y, "w": w, "h": h,
                "track_id": track_ids.get((r["source_id"], r["frame_id"], index)),
                **{name: r.get(name) for name in IDENTITY},
            })
    return pa.Table.from_pylist(rows, schema=DETECTIONS_SCHEMA)
