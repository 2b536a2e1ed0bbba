"""A detection: one object found in one frame. The one type the detector gives, tracking and counting
take, alert rules look at and drawing draws; the landing record holds it as JSON (`as_record`, the
record's `LandedDetection`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Detection:
    """One object in a frame: its class, the detector's confidence and its box (x, y, w, h in pixels of the
    original frame). `class_id` is the model's class number (None where a row does not say it), `index` its
    place among its frame's detections, `track_id` its track (None until tracked and confirmed)."""

    class_name: str
    confidence: float
    box: tuple[int, int, int, int]
    class_id: int | None = None
    index: int | None = None
    track_id: int | None = None

    def with_track(self, track_id: int | None) -> Detection:
        """The same detection given its track. Built field by field: `dataclasses.replace` costs twice as
        much, and tracking gives every confirmed detection of every frame its id."""
        return Detection(class_name=self.class_name, confidence=self.confidence, box=self.box,
                         class_id=self.class_id, index=self.index, track_id=track_id)

    def as_record(self) -> dict:
        """The landing record's JSON of it: what the detector found, the box a list (`LandedDetection`)."""
        return {"class_id": self.class_id, "class_name": self.class_name, "confidence": self.confidence,
                "box": list(self.box)}
