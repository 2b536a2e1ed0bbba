"""`silent`: a source sends no frame for the rule's minutes."""

from __future__ import annotations

from imgpipeline.vision.events import Event, EventFrame
from imgpipeline.vision.rules import register
from imgpipeline.vision.rules.base import SilenceKind


@register
class Silent(SilenceKind):
    name = "silent"

    def due(self, rule, last_seconds: float) -> float:
        return last_seconds + rule.minutes * 60

    def event(self, rule, source: str, before: EventFrame, after: EventFrame | None) -> Event:
        """The alert of a silence after `before` (`after`: the source's next frame, if one came)."""
        ids = (before.frame_id,) + ((after.frame_id,) if after is not None else ())
        return Event(rule.name, source, f"{rule.name}|{source}|silent|{before.frame_id}",
                     self.due(rule, before.seconds), before.frame_id, ids,
                     f"no frame for {rule.minutes:g} min after this one")
