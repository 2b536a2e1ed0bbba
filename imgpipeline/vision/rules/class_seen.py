"""`class`: an object of the rule's classes is seen (its most confident detection is the subject)."""

from __future__ import annotations

from imgpipeline.vision.rules import register
from imgpipeline.vision.rules.base import FrameKind, confident


@register
class ClassSeen(FrameKind):
    name = "class"

    def holds(self, rule, frame, window) -> tuple | None:
        seen = confident(rule, frame)
        if not seen:
            return None
        best = max(seen, key=lambda s: (s.confidence, -s.index))
        return f"{best.class_name} seen ({best.confidence:.2f})", best
