"""`line_cross`: a track crosses the rule's line (either way, or the way it names)."""

from __future__ import annotations

from imgpipeline.vision.events import Event
from imgpipeline.vision.rules import register
from imgpipeline.vision.rules.base import Step, TrackKind, occurrence, subject, tracked, wanted


@register
class LineCross(TrackKind):
    name = "line_cross"
    place = "line"

    def fires(self, rule, source: str, step: Step) -> list[Event]:
        fired = []
        for c in step.crossings:
            if c.line != rule.line or rule.direction not in ("any", c.way) or not wanted(rule, c.class_name):
                continue

            def key(who, c=c):
                return f"{rule.name}|{source}|line|{c.line}|{who}|{c.way}|{c.frame_id}"

            seen = tracked(step.frame, c.track_id)
            fired.append(Event(rule.name, source, key(c.track_id), c.seconds, c.frame_id, (c.frame_id,),
                               f"{c.class_name} crossed line {c.line} ({c.way})", *subject(seen),
                               occurrence=occurrence(seen, key)))
        return fired
