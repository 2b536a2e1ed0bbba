"""`zone_enter`: a track enters the rule's zone (a visit's first frame)."""

from __future__ import annotations

from functools import partial

from imgpipeline.vision.events import Event
from imgpipeline.vision.rules import register
from imgpipeline.vision.rules.base import Step, TrackKind, occurrence, subject, tracked, visit_key, visits


@register
class ZoneEnter(TrackKind):
    name = "zone_enter"
    place = "zone"

    def fires(self, rule, source: str, step: Step) -> list[Event]:
        entry = step.frame.frame_id
        fired = []
        for visit in step.inside:
            if visits(rule, visit) and len(visit.frames) == 1:
                seen = tracked(step.frame, visit.track_id)
                fired.append(Event(rule.name, source, visit_key(rule, source, visit), visit.frames[0][0],
                                   entry, (entry,), f"{visit.class_name} entered zone {visit.zone}",
                                   *subject(seen),
                                   occurrence=occurrence(seen, partial(visit_key, rule, source, visit))))
        return fired
