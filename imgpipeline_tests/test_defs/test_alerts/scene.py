"""A scene for the alert tests: frames with real images in storage, landed as detect_frames lands them."""

from __future__ import annotations

from datetime import UTC, datetime

import cv2
import numpy as np

from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.ingest.messages import frame_key, sha256_hex
from imgpipeline.vision.quality import encode_jpeg
from imgpipeline_tests.scenes import frames_of, landing_records, moving
from imgpipeline_tests.test_defs.test_tracking.test_tracking import land

START = datetime(2026, 11, 20, 10, 59, 50, tzinfo=UTC)  # ten seconds before 11:00
RANGE = ("2026-11-20-10:00", "2026-11-20-11:00")
ZONES = """
sources:
  cam:
    lines: [{name: door, start: [320, 0], end: [320, 480]}]
    zones: [{name: bench, polygon: [[400, 0], [640, 0], [640, 480], [400, 480]]}]
"""
RULES = """
notify:
  ops: {url: "%(ops)s", attempts: 4, backoff_s: 0.05, token_env: OPS_TOKEN}
  broken: {url: "%(broken)s", attempts: 2, backoff_s: 0.05, retry_for_s: 0}
rules:
  - {name: person-through-door, kind: line_cross, line: door, classes: [person], notify: [ops],
     severity: critical}
  - {name: on-the-bench, kind: zone_enter, zone: bench, classes: [person], notify: [broken]}
  - {name: car-seen, kind: class, classes: [car], severity: info}
  - {name: two-cars, kind: count, classes: [car], at_least: 2}
"""


def records(store, start=START, prefix="cam", ranges: str | None = "frames-0-0-100",
            tweak=None) -> list[LandingRecord]:
    """A person walking through the door into the bench zone across 11:00; a car parked all along and a
    second car passing at the start. Every frame has its image in storage; the records are landed as one
    range (not landed when `ranges` is None)."""
    things = [moving("person", 100, 560, 8, 14), moving("car", 20, 21, 0, 20, y=460),
              moving("car", 200, 300, 0, 3, y=300)]
    found = landing_records([(f"{prefix}-{n:04d}", when, seen) for n, (_, when, seen)
                             in enumerate(frames_of(things, start, 20, 5.0))])
    for record in found:
        image = np.full((480, 640, 3), 90, np.uint8)
        for d in record.detections:
            x, y, w, h = d["box"]
            cv2.rectangle(image, (x, y), (x + w, y + h), (30, 200, 30), -1)
        # Each frame's own bytes, as a live camera's (frames alike to the byte are a frozen camera).
        cv2.putText(image, record.frame_id, (8, 470), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        data = encode_jpeg(image)
        captured = datetime.fromisoformat(record.captured_at.replace("Z", "+00:00"))
        key = frame_key("cam", captured, record.frame_id)
        store.put(key, data)
        record.uri, record.sha256, record.brightness = store.uri(key), sha256_hex(data), 90.0
    if tweak is not None:
        tweak(found)
    if ranges is not None:
        land(store, found, ranges)
    return found
