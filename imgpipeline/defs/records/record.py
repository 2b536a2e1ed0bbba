"""The landing record: one frame as a run processed it, a line of a landing file (docs/contracts.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TypedDict

from imgpipeline.ingest.messages import parse_time

# A frame whose capture time lies before the partitions' start or too far ahead of the broker's time
# (defs/partitions.py), or in a retired day: recorded, not detected, in the hour it reached the broker.
OUT_OF_RANGE = "out_of_range"
# Statuses of a frame that was not processed: another message for the same frame is processed all the
# same, and a processed record of the frame is kept over these whatever their order.
UNPROCESSED = ("error", OUT_OF_RANGE)


class LandedDetection(TypedDict):
    """One object a detector found in a frame as the landing file holds it (the box x, y, w, h in pixels of
    the frame): the JSON view of `vision.detection.Detection`, which `Detection.as_record` writes. Not a
    second detection type: readers that track, count, alert or draw make `Detection`s of it."""

    class_id: int
    class_name: str
    confidence: float
    box: list[int]


@dataclass(slots=True, kw_only=True)
class LandingRecord:
    """One frame as a run processed it: a line of a landing file (docs/contracts.md), its fields in
    the order they are written. Built by the run (`processing.py`), read back by `read_records`."""

    # the frame message's fields (for a message that could not be parsed: schema None, frame_id
    # `<topic>-<partition>-<offset>`, source_id the stand-in of its key (`stand_in_source`; None in files
    # landed before stand-ins), captured_at the broker's time)
    schema: int | None
    frame_id: str
    source_id: str | None
    captured_at: str
    uri: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    content_type: str | None = None
    # what the run made of it
    status: str | None = None
    error: str | None = None
    ingested_at: str | None = None
    processed_at: str | None = None
    run_id: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    bytes: int | None = None
    brightness: float | None = None
    contrast: float | None = None
    sharpness: float | None = None
    # what produced its detections (absent from records landed before they were recorded)
    model: str | None = None
    model_sha256: str | None = None
    engine: str | None = None
    precision: str | None = None
    object_count: int = 0
    detections: list[LandedDetection] = field(default_factory=list)

    @property
    def identity(self) -> tuple[str | None, str]:
        """A frame is (source_id, frame_id): two cameras may both send IMG_0001.jpg."""
        return self.source_id, self.frame_id

    @property
    def processed(self) -> bool:
        """True for a frame that was processed (detected, dark or shed), not an error or out of range."""
        return self.status not in UNPROCESSED

    @property
    def event_hour(self) -> datetime:
        """The UTC hour of the capture time: the record's landing folder and warehouse partition. A
        frame captured out of range goes to the hour it reached the broker, which a partition reads."""
        moment = self.ingested_at if self.status == OUT_OF_RANGE else self.captured_at
        return parse_time(moment).replace(minute=0, second=0, microsecond=0)

    def to_json(self) -> bytes:
        return json.dumps({name: getattr(self, name) for name in _FIELDS}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, line: bytes | str) -> LandingRecord:
        written = json.loads(line)
        try:
            return cls(**written)
        except TypeError:  # written by another version: fields it lacks are empty, others are left out
            return cls(**{name: written.get(name) for name in _FIELDS
                          if name in written or name in _REQUIRED})


_FIELDS = tuple(f.name for f in fields(LandingRecord))
_REQUIRED = ("schema", "frame_id", "source_id", "captured_at")
