"""`dark`: a frame skipped as dark, or darker than the rule's brightness."""

from __future__ import annotations

from imgpipeline.vision.rules import register
from imgpipeline.vision.rules.base import FrameKind


@register
class Dark(FrameKind):
    name = "dark"

    def holds(self, rule, frame, window) -> tuple | None:
        dark = frame.status == "skipped_dark" if rule.max_brightness is None else (
            frame.brightness is not None and frame.brightness < rule.max_brightness)
        if not dark:
            return None
        return (f"dark frame (brightness {frame.brightness:.1f})" if frame.brightness is not None
                else "dark frame"), None
