"""Rows of the warehouse's hourly `frames` and `detections` from landing records (columns: defs/tables)."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.defs.tables import DETECTIONS_SCHEMA, FRAMES_SCHEMA, IDENTITY
from imgpipeline.ingest.messages import parse_time


def latest_per_frame(records: list[LandingRecord]) -> list[LandingRecord]:
    """One record per frame (source_id, frame_id): a processed record over an error (or out of range)
    whatever their order, then the latest processing; ordered by capture time, source and id."""
    best: dict[tuple, LandingRecord] = {}
    for record in sorted(records, key=lambda r: (r.processed, r.processed_at or "", r.topic or "",
                                                 r.partition or 0, r.offset or 0)):
        best[record.identity] = record
    return sorted(best.values(), key=lambda r: (r.captured_at, r.source_id or "", r.frame_id))


def _time(text: str | None) -> datetime | None:
    return parse_time(text) if text else None


def frames_table(records: list[LandingRecord]) -> pa.Table:
    rows = []
    for r in records:
        rows.append({
            **{name: getattr(r, name, None) for name in FRAMES_SCHEMA.names},
            "file_name": r.uri.rsplit("/", 1)[-1] if r.uri else None,
            "captured_at": _time(r.captured_at),
            "ingested_at": _time(r.ingested_at),
            "processed_at": _time(r.processed_at),
        })
    return pa.Table.from_pylist(rows, schema=FRAMES_SCHEMA)


def detections_table(records: list[LandingRecord], track_ids: dict[tuple[str, str, int], int] | None = None
                     ) -> pa.Table:
    """One row per detection; `track_ids` ((source, frame, detection index) → id) fills track_id."""
    track_ids = track_ids or {}
    rows = []
    for r in records:
        detections = r.detections or []
        order = sorted(range(len(detections)), key=lambda i: -detections[i]["confidence"])
        ranks, seen = {}, {}
        for i in order:
            name = detections[i]["class_name"]
            seen[name] = ranks[i] = seen.get(name, 0) + 1
        for index, d in enumerate(detections):
            x, y, w, h = d["box"]
            rows.append({
                "frame_id": r.frame_id, "source_id": r.source_id,
                "captured_at": _time(r.captured_at), "detection_index": index,
                "class_id": d["class_id"], "class_name": d["class_name"],
                "confidence": d["confidence"], "class_rank": ranks[index],
                "x": x, "y": y, "w": w, "h": h,
                "track_id": track_ids.get((r.source_id, r.frame_id, index)),
                **{name: getattr(r, name) for name in IDENTITY},
            })
    return pa.Table.from_pylist(rows, schema=DETECTIONS_SCHEMA)
