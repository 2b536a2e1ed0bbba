"""`count`: at least so many objects of the rule's classes in one frame."""

from __future__ import annotations

from imgpipeline.vision.rules import register
from imgpipeline.vision.rules.base import FrameKind, confident


@register
class Crowd(FrameKind):
    name = "count"

    def holds(self, rule, frame, window) -> tuple | None:
        seen = confident(rule, frame)
        if len(seen) < rule.at_least:
            return None
        return f"{len(seen)} × {'/'.join(sorted({s.class_name for s in seen}))} in one frame", None
