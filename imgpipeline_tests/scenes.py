"""Synthetic scenes for tracking tests: objects moving on known paths, sampled at a known rate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.vision import counting
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.tracking import TrackedFrame, TrackerSettings, assign

Box = tuple[int, int, int, int]


@dataclass
class Thing:
    """An object on a path: box(t) for t seconds into the scene, None when not seen."""

    class_name: str
    box: Callable[[float], Box | None]
    confidence: float = 0.9


def moving(
    class_name: str, x0: float, x1: float, t0: float, t1: float, y: int = 100, size: int = 40
) -> Thing:
    """A box moving along y from x0 to x1 between t0 and t1 (seen only then)."""

    def box(t):
        if not t0 <= t <= t1:
            return None
        x = x0 + (x1 - x0) * (t - t0) / max(t1 - t0, 1e-9)
        return (round(x) - size // 2, y - size, size, size)

    return Thing(class_name, box)


def frames_of(
    things: list[Thing], start: datetime, seconds: float, fps: float, source: str = "cam"
) -> list[tuple[str, datetime, list[tuple[str, float, Box]]]]:
    """(frame_id, capture time, [(class, confidence, box)]) per frame, in capture order."""
    frames, n = [], 0
    while n / fps < seconds:
        t = n / fps
        seen = [
            (thing.class_name, thing.confidence, b) for thing in things if (b := thing.box(t)) is not None
        ]
        frames.append((f"{source}-{n:06d}", start + timedelta(seconds=t), seen))
        n += 1
    return frames


def tracked(frames, settings: TrackerSettings | None = None) -> tuple[list[TrackedFrame], dict]:
    """The frames as the tracker takes them, and the ids it gives (no previous hour)."""
    tf = [
        TrackedFrame(
            fid, when.timestamp(), [Detection(index=i, class_name=c, confidence=conf, box=box)
                                    for i, (c, conf, box) in enumerate(seen)]
        )
        for fid, when, seen in frames
    ]
    return tf, assign([], tf, settings or TrackerSettings())


def counted(tf: list[TrackedFrame], ids: dict, width: int = 640, height: int = 480) -> list:
    return counting.from_tracker(tf, ids, width, height)


def landing_records(frames, source: str = "cam", width: int = 640, height: int = 480) -> list[LandingRecord]:
    """Landing records of detected frames, as detect_frames writes them."""
    records = []
    for offset, (fid, when, seen) in enumerate(frames):
        stamp = when.isoformat().replace("+00:00", "Z")
        records.append(LandingRecord(
            schema=1, frame_id=fid, source_id=source, captured_at=stamp, ingested_at=stamp,
            processed_at=stamp, status="detected", width=width, height=height, object_count=len(seen),
            topic="frames", partition=0, offset=offset, run_id="test",
            detections=[{"class_id": 0, "class_name": c, "confidence": conf, "box": list(box)}
                        for c, conf, box in seen],
        ))
    return records
