"""Lines and zones per source (`zones.yaml`): the schema, its checks, and supervision's zone logic.

A line counts crossings with supervision's `LineZone`; a zone finds the detections inside it with
`PolygonZone`. Coordinates are pixels, or fractions of the frame (`units: fraction`), resolved for
each frame size as frames come.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from imgpipeline.vision import yaml_file

MAX_FILE_BYTES = yaml_file.MAX_FILE_BYTES
MAX_PIXELS = 20_000  # a polygon becomes a mask as large as its extent: bounded
ANCHORS = {
    "bottom_center": ("BOTTOM_CENTER",),
    "center": ("CENTER",),
    "corners": ("TOP_LEFT", "TOP_RIGHT", "BOTTOM_LEFT", "BOTTOM_RIGHT"),
}
Point = tuple[float, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Line(_Strict):
    """A counting line from `start` to `end`: crossing it to the left (as the image shows it, walking
    from start to end) is `in`, to the right is `out`."""

    name: str = Field(min_length=1, max_length=100)
    start: Point
    end: Point
    anchor: Literal["bottom_center", "center", "corners"] = "bottom_center"
    min_frames: int = Field(2, ge=1, le=100)  # frames on the new side before a crossing counts

    @model_validator(mode="after")
    def _has_length(self):
        if self.start == self.end:
            raise ValueError(f"line {self.name!r}: start and end are the same point; a line needs two")
        return self


class Zone(_Strict):
    """An area: a polygon of at least three points; an object is in it when its anchor is."""

    name: str = Field(min_length=1, max_length=100)
    polygon: list[Point] = Field(min_length=3, max_length=1000)
    anchor: Literal["bottom_center", "center", "corners"] = "bottom_center"


class SourceZones(_Strict):
    units: Literal["pixels", "fraction"] = "pixels"
    lines: list[Line] = Field(default_factory=list, max_length=100)
    zones: list[Zone] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _valid(self):
        names = [item.name for item in (*self.lines, *self.zones)]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"names must be unique within a source; repeated: {', '.join(dupes)}")
        high = 1.0 if self.units == "fraction" else MAX_PIXELS
        for item in (*self.lines, *self.zones):
            points = [item.start, item.end] if isinstance(item, Line) else item.polygon
            for x, y in points:
                if not (0 <= x <= high and 0 <= y <= high):
                    raise ValueError(
                        f"{item.name!r}: point ({x:g}, {y:g}) is outside 0…{high:g}; with units "
                        + (
                            "fraction, write fractions of the frame"
                            if self.units == "fraction"
                            else "pixels, write pixels of the frame (or set units: fraction)"
                        )
                    )
        return self


class ZonesFile(_Strict):
    sources: dict[str, SourceZones] = Field(default_factory=dict)

    @field_validator("sources")
    @classmethod
    def _ids(cls, value):
        for source in value:
            if not source or len(source) > 200:
                raise ValueError(f"source id {source!r} must be 1–200 characters")
        return value


class Zones:
    """A loaded zones file: the parsed lines and zones and the sha256 of the file's bytes."""

    def __init__(self, spec: ZonesFile, sha256: str | None, path: str | None = None):
        self.spec, self.sha256, self.path = spec, sha256, path

    def of(self, source_id: str) -> SourceZones:
        return self.spec.sources.get(source_id) or SourceZones()

    def geometry(self, source_id: str, width: int, height: int) -> tuple[dict, dict]:
        """supervision objects for one source at one frame size: ({line: LineZone}, {zone: PolygonZone})."""
        import supervision as sv

        spec = self.of(source_id)
        if not (width and height and width > 0 and height > 0):
            return {}, {}  # a frame of unknown size: where its boxes lie is unknown too
        sx, sy = (width, height) if spec.units == "fraction" else (1, 1)

        def scaled(point):
            return float(point[0]) * sx, float(point[1]) * sy

        def inside(point):  # a zone's mask is as large as its extent: no larger than the frame
            x, y = scaled(point)
            return min(max(x, 0.0), float(width)), min(max(y, 0.0), float(height))

        def anchors(name):
            return [getattr(sv.Position, a) for a in ANCHORS[name]]

        lines = {
            line.name: sv.LineZone(
                start=sv.Point(*scaled(line.start)),
                end=sv.Point(*scaled(line.end)),
                triggering_anchors=anchors(line.anchor),
                minimum_crossing_threshold=line.min_frames,
            )
            for line in spec.lines
        }
        zones = {
            zone.name: sv.PolygonZone(
                np.array([inside(p) for p in zone.polygon]).round().astype(int),
                triggering_anchors=anchors(zone.anchor),
            )
            for zone in spec.zones
        }
        return lines, zones


MAX_DEPTH = 12  # a zones file nests 6 deep (sources, source, zones, zone, polygon, point)


def no_zones() -> Zones:
    return Zones(ZonesFile(), None)


def load(path: Path) -> Zones:
    """Read and check a zones file; a ConfigError says where it is wrong and what to write."""
    return parse(yaml_file.read_bounded(path, "zones file"), str(path))


def parse(data: bytes, name: str = "zones.yaml") -> Zones:
    spec = yaml_file.parse_model(data, name, ZonesFile, max_depth=MAX_DEPTH, needed="lines and zones need 6",
                                 top="`sources:`", where=_where)
    return Zones(spec, hashlib.sha256(data).hexdigest(), name)


def _where(error: dict) -> str:
    text = yaml_file.error_text(error)
    if error["type"] in ("tuple_type", "missing", "too_long") and {"start", "end", "polygon"} & {
        str(part) for part in error["loc"]
    }:
        text += " (a point is [x, y])"
    return text
