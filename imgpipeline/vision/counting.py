"""Counting what tracks did in an hour: distinct objects, line crossings each way, zone visits and dwell.

Pure functions over one source's tracked frames in capture order. The frames given span the hour
before and the hour after the one counted: lines learn which side each track was on before the hour
(supervision's `LineZone` keeps that state), and a zone visit begun in the hour is followed into the
next to measure its whole dwell. Only confirmed tracks count; a crossing counts in the hour its
frame falls in, a visit in the hour it begins.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from imgpipeline.vision.detection import Detection
from imgpipeline.vision.zones import Zones


@dataclass
class CountedFrame:
    frame_id: str
    seconds: float
    width: int
    height: int
    tracked: list[Detection] = field(default_factory=list)  # confirmed: each with its track_id


@dataclass
class Visit:
    zone: str
    track_id: int
    class_name: str
    start: float
    end: float
    frames: list[tuple[float, str]] = field(default_factory=list)  # (seconds, frame id) inside the zone


@dataclass(frozen=True)
class Crossing:
    line: str
    class_name: str
    track_id: int
    way: str  # in | out
    frame_id: str
    seconds: float


@dataclass
class Counts:
    """What one source's tracks did in one hour."""

    objects: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))  # class → tracks
    crossings: list[Crossing] = field(default_factory=list)
    visits: list[Visit] = field(default_factory=list)


def from_tracker(frames, ids: dict[tuple[str, int], int], width: int, height: int) -> list[CountedFrame]:
    """The tracker's frames (`vision.tracking.TrackedFrame`) and the ids it gave, as counting takes them:
    each frame with its confirmed detections only, given their ids."""
    return [
        CountedFrame(f.frame_id, f.seconds, width, height, [
            o.with_track(ids[f.frame_id, o.index]) for o in f.observations if (f.frame_id, o.index) in ids])
        for f in frames
    ]


class Counter:
    """One source's lines and zones, fed its tracked frames in capture order: what each frame crossed,
    and the zone visits it closed (those going on are in `open`)."""

    def __init__(self, zones: Zones, source_id: str):
        self.zones, self.source_id = zones, source_id
        self.geometry: dict[tuple[int, int], tuple[dict, dict]] = {}
        self.classes: dict[str, int] = {}
        self.open: dict[tuple[str, int], Visit] = {}

    def step(self, frame: CountedFrame, lines_only: bool = False) -> tuple[list[Crossing], list[Visit]]:
        """The frame's crossings and the visits it ended; `lines_only`: the lines learn where its tracks
        are and no visit opens or ends (frames replayed to take up a count where it was left)."""
        import supervision as sv

        size = (frame.width, frame.height)
        if size not in self.geometry:
            self.geometry[size] = self.zones.geometry(self.source_id, *size)
        lines, areas = self.geometry[size]
        detections = sv.Detections(
            xyxy=np.array(
                [[x, y, x + w, y + h] for x, y, w, h in (t.box for t in frame.tracked)], dtype=np.float32
            ).reshape(-1, 4),
            tracker_id=np.array([t.track_id for t in frame.tracked], dtype=np.int64),
            class_id=np.array(
                [self.classes.setdefault(t.class_name, len(self.classes)) for t in frame.tracked], dtype=int
            ),
        )
        crossings, closed = [], []
        for name, line in lines.items():
            crossed_in, crossed_out = line.trigger(detections)
            for t, went_in, went_out in zip(frame.tracked, crossed_in, crossed_out, strict=True):
                if went_in or went_out:
                    way = "in" if went_in else "out"
                    crossings.append(Crossing(name, t.class_name, t.track_id, way, frame.frame_id,
                                              frame.seconds))
        for name, area in ({} if lines_only else areas).items():
            inside = area.trigger(detections) if frame.tracked else []
            for t, is_in in zip(frame.tracked, inside, strict=True):
                visit = self.open.get((name, t.track_id))
                if is_in and visit is None:
                    visit = self.open[name, t.track_id] = Visit(
                        name, t.track_id, t.class_name, frame.seconds, frame.seconds
                    )
                if is_in:
                    visit.end = frame.seconds
                    visit.frames.append((frame.seconds, frame.frame_id))
                elif visit is not None:
                    closed.append(self.open.pop((name, t.track_id)))
        return crossings, closed


def count(frames: list[CountedFrame], zones: Zones, source_id: str, start: float, end: float) -> Counts:
    """Counts of the hour [start, end) from a source's frames in capture order (they may begin
    before and end after it)."""
    counts = Counts()
    counter = Counter(zones, source_id)
    for frame in frames:
        counted = start <= frame.seconds < end
        if counted:
            for t in frame.tracked:
                counts.objects[t.class_name].add(t.track_id)
        crossings, closed = counter.step(frame)
        if counted:
            counts.crossings += crossings
        for visit in closed:
            _close(visit, counts, start, end)
    for visit in counter.open.values():
        _close(visit, counts, start, end)
    return counts


def _close(visit: Visit, counts: Counts, start: float, end: float) -> None:
    if start <= visit.start < end:
        counts.visits.append(visit)


def rows(counts: Counts, line_names: list[str], zone_names: list[str]) -> list[dict]:
    """object_counts rows of one source and hour: per class seen, its distinct objects; per line and
    class, the objects that crossed and the crossings each way; per zone and class, visits and dwell."""
    found = []
    for class_name in sorted(counts.objects):
        found.append(
            {
                "class_name": class_name,
                "kind": "objects",
                "name": None,
                "unique_objects": len(counts.objects[class_name]),
            }
        )
        for line in line_names:
            mine = [
                (c.track_id, c.way) for c in counts.crossings if c.line == line and c.class_name == class_name
            ]
            found.append(
                {
                    "class_name": class_name,
                    "kind": "line",
                    "name": line,
                    "unique_objects": len({track for track, _ in mine}),
                    "crossed_in": sum(way == "in" for _, way in mine),
                    "crossed_out": sum(way == "out" for _, way in mine),
                }
            )
        for zone in zone_names:
            dwell = [v.end - v.start for v in counts.visits if v.zone == zone and v.class_name == class_name]
            found.append(
                {
                    "class_name": class_name,
                    "kind": "zone",
                    "name": zone,
                    "unique_objects": len(
                        {v.track_id for v in counts.visits if v.zone == zone and v.class_name == class_name}
                    ),
                    "visits": len(dwell),
                    **dict(
                        zip(
                            ("dwell_p50_s", "dwell_p95_s", "dwell_max_s"),
                            (
                                [
                                    float(np.percentile(dwell, 50)),
                                    float(np.percentile(dwell, 95)),
                                    float(max(dwell)),
                                ]
                                if dwell
                                else [None, None, None]
                            ),
                            strict=True,
                        )
                    ),
                }
            )
    return found


def in_zones(zones: Zones, source_id: str, width: int, height: int,
             detections: list[tuple[str, tuple[int, int, int, int]]]) -> dict[str, dict[str, int]]:
    """Per zone of the source, the objects of one frame inside it now (its anchor in the polygon, as a
    visit begins), per class: (class name, box x, y, w, h) each, tracked or not."""
    import supervision as sv

    _, areas = zones.geometry(source_id, width, height)
    found: dict[str, dict[str, int]] = {name: {} for name in areas}
    if not detections:
        return found
    boxes = sv.Detections(xyxy=np.array([[x, y, x + w, y + h] for _, (x, y, w, h) in detections],
                                        dtype=np.float32).reshape(-1, 4))
    for name, area in areas.items():
        for (class_name, _), inside in zip(detections, area.trigger(boxes), strict=True):
            if inside:
                found[name][class_name] = found[name].get(class_name, 0) + 1
    return found
