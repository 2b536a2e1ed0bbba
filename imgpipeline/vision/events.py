"""What alert rules look at and what they fire: a source's frame with its detections (`EventFrame`) and an
alert (`Event`). The rules are evaluated by `vision/evaluator.py`, each kind by its module of
`vision/rules/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imgpipeline.vision.detection import Detection


@dataclass
class EventFrame:
    frame_id: str
    seconds: float
    status: str
    brightness: float | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    seen: list[Detection] = field(default_factory=list)  # each with its index, and its track once tracked


@dataclass(frozen=True)
class Event:
    rule: str
    source_id: str
    key: str
    seconds: float  # when it fired, capture time
    frame_id: str  # the evidence frame
    frame_ids: tuple[str, ...]
    detail: str
    track_id: int | None = None
    detection_index: int | None = None
    class_name: str | None = None
    # A track rule's alert about one detected object: its key with the detection's index in the frame
    # instead of the track id (the same object's alert whatever id a tracking gave it); else None.
    occurrence: str | None = None
