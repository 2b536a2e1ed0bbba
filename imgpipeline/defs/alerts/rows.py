"""Alert rows from the stored hourly tables, and each alert's evidence images (columns: defs/tables)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from imgpipeline.defs.records.record import OUT_OF_RANGE
from imgpipeline.defs.tables import ALERTS_SCHEMA, TRACKED_COLUMNS
from imgpipeline.ingest.messages import annotated_key
from imgpipeline.resources.storage import BadObject, Storage
from imgpipeline.vision import drawing, events
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.quality import UndecodableImage, decode_image, encode_jpeg

FRAME_COLUMNS = ["source_id", "frame_id", "captured_at", "status", "brightness", "sha256", "width", "height",
                 "uri"]
# Statuses whose image decoded when it was processed: only those are drawn as evidence.
DRAWN = ("detected", "skipped_dark")


def around(hour: datetime) -> list[datetime]:
    return [hour - timedelta(hours=1), hour, hour + timedelta(hours=1)]


def event_frames(frames: pa.Table, detections: pa.Table) -> dict[str, list[events.EventFrame]]:
    """Each source's frames with their detections, as the rules take them."""
    found: dict[tuple[str, str], events.EventFrame] = {}
    for f in frames.select(FRAME_COLUMNS).to_pylist():
        if f["status"] == OUT_OF_RANGE:
            continue  # its capture time says nothing of when it was seen: silences and runs ignore it
        found[f["source_id"], f["frame_id"]] = events.EventFrame(
            f["frame_id"], f["captured_at"].timestamp(), f["status"], f["brightness"], f["sha256"],
            f["width"], f["height"])
    for d in sorted(detections.select(TRACKED_COLUMNS).to_pylist(), key=lambda d: d["detection_index"]):
        frame = found.get((d["source_id"], d["frame_id"]))
        if frame is not None:
            frame.seen.append(Detection(index=d["detection_index"], class_name=d["class_name"],
                                        confidence=d["confidence"], box=(d["x"], d["y"], d["w"], d["h"]),
                                        track_id=d["track_id"]))
    per_source: dict[str, list[events.EventFrame]] = defaultdict(list)
    for (source, _), frame in found.items():
        per_source[source].append(frame)
    return dict(per_source)


def alert_rows(hour: datetime, fired: list[events.Event], numbers: list[int], rules,
               evidence: dict) -> pa.Table:
    rows = []
    for event, number in zip(fired, numbers, strict=True):
        rule = rules.rule(event.rule)
        annotated, crop = evidence.get(event.key, (None, None))
        rows.append({
            "number": number, "fired_at": datetime.fromtimestamp(event.seconds, UTC), "hour_start": hour,
            "source_id": event.source_id, "rule": event.rule, "kind": rule.kind, "severity": rule.severity,
            "detail": event.detail, "frame_id": event.frame_id, "frame_ids": list(event.frame_ids),
            "track_id": event.track_id, "class_name": event.class_name,
            "detection_index": event.detection_index, "annotated_key": annotated, "crop_key": crop,
            "alert_key": event.key, "rules_sha256": rules.sha256,
        })
    return pa.Table.from_pylist(sorted(rows, key=lambda r: r["number"]), schema=ALERTS_SCHEMA)


def draw_evidence(store: Storage, event: events.Event, number: int, frame: dict | None,
                  seen: list[Detection],
                  max_bytes: int) -> tuple[str | None, str | None]:
    """The alert frame with its detections drawn (the subject framed in white) and the subject's crop,
    stored under `annotated/` as the alert's own (`<frame>.alert-<number>[.crop].jpg`: two alerts on one
    frame frame different subjects); (None, None) when the frame's image cannot be read.

    An alert drawn before (by the live lane, or an earlier run of its hour) is not drawn again: under one
    number the frame, its detections and the subject stay the same, and an hour is made again at each of
    its new ranges. The crop is stored before the drawing, so a drawing found has its crop."""
    if frame is None or frame["status"] not in DRAWN or not frame["uri"]:
        return None, None
    subject = next((s for s in seen if s.index == event.detection_index), None)
    key = annotated_key(event.source_id, frame["captured_at"], event.frame_id, f"alert-{number}")
    crop_key = None if subject is None else annotated_key(event.source_id, frame["captured_at"],
                                                          event.frame_id, f"alert-{number}.crop")
    if store.exists(key):
        return key, crop_key
    try:
        image = decode_image(store.get(store.key_for(frame["uri"]), max_bytes=max_bytes))
    except (BadObject, UndecodableImage):
        return None, None
    annotated = drawing.draw_detections(image, seen)
    if subject is not None:
        drawing.highlight(annotated, subject.box)
        store.put(crop_key, encode_jpeg(drawing.crop(image, subject.box)))
    store.put(key, encode_jpeg(annotated))
    return key, crop_key
