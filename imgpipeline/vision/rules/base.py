"""What a rule kind is: one of three families, by what its rules look at (see the package's docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from imgpipeline.vision import counting
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.events import Event, EventFrame


@dataclass
class Step:
    """A source's next frame as the evaluator takes it: with its detections' track ids, and what its tracks
    did on the source's lines and zones (the crossings it made, the visits it is in) when it was tracked
    and counted; `blind_until`: tracks confirmed before then may be objects known under other ids (a
    tracker that did not see what came before), and fire no track rule."""

    frame: EventFrame
    crossings: list[counting.Crossing] = field(default_factory=list)
    inside: list[counting.Visit] = field(default_factory=list)
    blind_until: float = -math.inf


class Kind:
    """A kind of alert rule; `name` is what a rule's `kind:` says."""

    name = ""


class FrameKind(Kind):
    """Rules that hold on a frame, given the frames of its source before it: each run of frames where a
    rule holds is one episode, and an episode that starts fires (unless one ended within the cooldown)."""

    def holds(self, rule, frame: EventFrame, window) -> tuple | None:
        """Whether the rule holds on the frame: its detail and subject (a `Detection`, or None), else None.
        `window` is the evaluation the frame is fed to, for a kind that counts frames (frozen)."""
        raise NotImplementedError

    def event(self, rule, source: str, frame: EventFrame, found: tuple) -> Event:
        """The alert of an episode that starts at `frame` (`found`: its detail and subject)."""
        detail, seen = found
        return Event(rule.name, source, f"{rule.name}|{source}|frame|{frame.frame_id}", frame.seconds,
                     frame.frame_id, (frame.frame_id,), detail, *subject(seen))


class SilenceKind(Kind):
    """Rules that fire when a source sends nothing for a time."""

    def due(self, rule, last_seconds: float) -> float:
        """When the silence after a frame captured at `last_seconds` fires."""
        raise NotImplementedError

    def event(self, rule, source: str, before: EventFrame, after: EventFrame | None) -> Event:
        raise NotImplementedError


class TrackKind(Kind):
    """Rules on what tracks did: crossing a line, entering a zone, staying in one."""

    place = ""  # the zones file's section the rule names: `line` or `zone`

    def drawn(self, rule, spec) -> bool:
        """Whether the zones file draws the rule's line or zone for a source (`spec`: its zones)."""
        named = getattr(rule, self.place)
        return any(item.name == named for item in getattr(spec, f"{self.place}s"))

    def fires(self, rule, source: str, step: Step) -> list[Event]:
        """What the step's frame fires: the crossings it made, the visits it entered or made long enough."""
        raise NotImplementedError


def wanted(rule, class_name: str) -> bool:
    """Whether a rule counts objects of the class (a rule naming no class counts all)."""
    return rule.classes is None or class_name in rule.classes


def tracked(frame: EventFrame, track_id: int) -> Detection | None:
    """The detection of a track in a frame."""
    return next((s for s in frame.seen if s.track_id == track_id), None)


def subject(seen: Detection | None) -> tuple:
    """An alert's subject fields (track id, detection index, class) of a detection, or none."""
    return (seen.track_id, seen.index, seen.class_name) if seen is not None else (None, None, None)


def confident(rule, frame: EventFrame) -> list[Detection]:
    """The frame's detections of the rule's classes at its confidence."""
    return [s for s in frame.seen if s.class_name in rule.classes and s.confidence >= rule.min_confidence]


def visits(rule, visit: counting.Visit) -> bool:
    """Whether a zone visit is one the rule looks at: its zone, an object of its classes."""
    return visit.zone == rule.zone and wanted(rule, visit.class_name)


def visit_key(rule, source: str, visit: counting.Visit, who=None) -> str:
    """The key of a zone rule's alert on a visit: the same visit gives the same key, however found (`who`
    in place of the track id: the occurrence's)."""
    who = visit.track_id if who is None else who
    return f"{rule.name}|{source}|zone|{visit.zone}|{who}|{visit.frames[0][1]}"


def occurrence(seen: Detection | None, key_of) -> str | None:
    """A track rule's alert's occurrence: `key_of(who)` is its key with `who` in place of the track id,
    here the detection's index in the frame (None: the track has no detection in the frame)."""
    return key_of(f"#{seen.index}") if seen is not None and seen.index is not None else None
