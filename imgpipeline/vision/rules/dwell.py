"""`dwell`: a track stays in the rule's zone for the rule's seconds (fired at the frame it reached them)."""

from __future__ import annotations

from functools import partial

from imgpipeline.vision import counting
from imgpipeline.vision.events import Event
from imgpipeline.vision.rules import register
from imgpipeline.vision.rules.base import Step, TrackKind, occurrence, subject, tracked, visit_key, visits


def dwelt(rule, visit: counting.Visit) -> tuple[float, str] | None:
    """The first frame of a visit (seconds, frame id) at which it had lasted the rule's seconds. The
    visit's frames may be cut to its entry and last two (a later frame that reached them never comes
    first): it is the frame that reached them first still."""
    return next(((s, fid) for s, fid in visit.frames if s - visit.start >= rule.seconds), None)


@register
class Dwell(TrackKind):
    name = "dwell"
    place = "zone"

    def fires(self, rule, source: str, step: Step) -> list[Event]:
        fired = []
        for visit in step.inside:
            over = dwelt(rule, visit) if visits(rule, visit) else None
            if over is None or over[1] != step.frame.frame_id:
                continue
            seen = tracked(step.frame, visit.track_id)
            fired.append(Event(rule.name, source, visit_key(rule, source, visit), over[0], over[1],
                               (visit.frames[0][1], over[1]), f"{visit.class_name} in zone {visit.zone} for "
                               f"{rule.seconds:g} s", *subject(seen),
                               occurrence=occurrence(seen, partial(visit_key, rule, source, visit))))
        return fired
