"""`line_cross`: a track crosses the rule's line (either way, or the way it names)."""

from __future__ import annotations

from imgpipeline.vision.events import Event
from imgpipeline.vision.rules import register
from imgpipeline.vision.rules.base import Step, TrackKind, subject, tracked, wanted


@register
class LineCross(TrackKind):
    name = "line_cross"
    place = "line"

    def fires(self, rule, source: str, step: Step) -> list[Event]:
        return [Event(rule.name, source, f"{rule.name}|{source}|line|{c.line}|{c.track_id}|{c.way}|"
                      f"{c.frame_id}", c.seconds, c.frame_id, (c.frame_id,),
                      f"{c.class_name} crossed line {c.line} ({c.way})",
                      *subject(tracked(step.frame, c.track_id)))
                for c in step.crossings
                if c.line == rule.line and rule.direction in ("any", c.way) and wanted(rule, c.class_name)]
