"""`frozen`: so many identical frames in a row (the same bytes: a camera stuck on one picture)."""

from __future__ import annotations

from imgpipeline.vision.rules import register
from imgpipeline.vision.rules.base import FrameKind


@register
class Frozen(FrameKind):
    name = "frozen"

    def holds(self, rule, frame, window) -> tuple | None:
        """Counts the window's run of identical frames. A run that begins with the first frame the window
        was fed, before its hour, may have begun earlier still (its length is unknown): it fired then, or
        is left alone, until a different frame ends it."""
        if not window.fed:
            run, window.unknown = 1, frame.seconds < window.hour
        else:
            same = frame.sha256 is not None and frame.sha256 == window.sha256
            run, window.unknown = (window.run + 1 if same else 1), window.unknown and same
        window.run, window.sha256 = (0 if window.unknown else run), frame.sha256
        return (f"{window.run} identical frames in a row", None) if window.run >= rule.frames else None
