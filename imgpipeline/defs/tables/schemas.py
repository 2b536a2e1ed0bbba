"""Every table's columns, declared once (docs/contracts.md names each column; a test keeps them equal).

Rows carry what produced them (`IDENTITY`), so results of different models, engines or precisions are
never summed together unnoticed.
"""

from __future__ import annotations

import pyarrow as pa

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

# Per hour of capture × source × detector identity × class, made with the hour's detections (and stamped
# with their build): what the daily summary sums instead of reading every detection again.
CLASS_HOURS_SCHEMA = pa.schema([
    ("hour_start", TS), ("source_id", pa.string()), *_IDENTITY_FIELDS, ("class_name", pa.string()),
    ("frames_with_class", pa.int64()), ("objects", pa.int64()), ("confidence_sum", pa.float64()),
    ("max_confidence", pa.float64()), ("track_ids", pa.list_(pa.int64())),
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
