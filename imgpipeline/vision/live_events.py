"""Frame rules evaluated as frames come, giving the alerts the hourly evaluation (`events.evaluate`) gives.

The hourly alerts of an hour come from its frames with the hour before as history: every episode, cooldown
and run of identical frames is counted from the source's first frame at or after the start of the hour
before. A `Watch` keeps, for each source and frame rule, that same state for the two hours a new frame
can count in (its own hour, with the hour before as history, and the next, with its own as history), so
a frame fed in capture order fires exactly the alerts the hourly evaluation will give it, with the same
keys. Its state is a few numbers per source and rule, whatever the history, and it is saved as JSON
between runs (`to_json`, `from_json`).

What it cannot know it leaves to the hourly evaluation, which stays the truth: an hour whose history it
did not see whole (its state lost, or started mid-hour) fires nothing here; a frame older than its
source's latest (late, or sent again) is not fed. A silence is raised when the source's next frame, or a
frame of another source of the same partition, shows the time has passed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from imgpipeline.vision.alert_rules import AlertRules
from imgpipeline.vision.events import (
    FRAME_KINDS,
    Event,
    EventFrame,
    episode_event,
    frame_condition,
    frozen_detail,
    silence_event,
)

HOUR = 3600.0
EARLIEST = -math.inf


def hour_of(seconds: float) -> float:
    return math.floor(seconds / HOUR) * HOUR


@dataclass
class Window:
    """One rule's evaluation of one source for the hour starting at `hour`, as `events.evaluate` runs it
    over the frames from the hour before on; `blind` when those frames were not all seen."""

    hour: float
    blind: bool = False
    fed: bool = False
    before: bool = False  # the condition held on the previous frame
    last: float | None = None  # when it last held
    sha256: str | None = None  # frozen: the previous frame's bytes …
    run: int = 0  # … identical frames in a row up to it (0 while the run may have begun earlier)
    unknown: bool = False

    def feed(self, rule, frame: EventFrame, condition) -> tuple | None:
        """Feed the next frame; what it fires in this window's hour (detail and subject), else None."""
        found = self._frozen(rule, frame) if rule.kind == "frozen" else condition(frame)
        starts = False
        if found is None:
            self.before = False
        else:
            starts = not self.before and (self.last is None or frame.seconds - self.last > rule.cooldown_s)
            self.before, self.last = True, frame.seconds
        self.fed = True
        fires = starts and not self.blind and self.hour <= frame.seconds < self.hour + HOUR
        return found if fires else None

    def _frozen(self, rule, frame: EventFrame) -> tuple | None:
        if not self.fed:
            run, self.unknown = 1, frame.seconds < self.hour
        else:
            same = frame.sha256 is not None and frame.sha256 == self.sha256
            run, self.unknown = (self.run + 1 if same else 1), self.unknown and same
        self.run, self.sha256 = (0 if self.unknown else run), frame.sha256
        return frozen_detail(self.run) if self.run >= rule.frames else None


@dataclass
class Source:
    last_seconds: float
    last_frame: str
    silenced: list[str] = field(default_factory=list)  # silent rules raised since the last frame
    windows: dict[str, dict[str, Window]] = field(default_factory=dict)  # rule: hour: window


class Watch:
    """The frame rules' state for the sources of one partition of the frames topic."""

    def __init__(self, rules: AlertRules, seen_since: float = EARLIEST):
        """`seen_since`: the capture time since which every frame of the partition is fed (EARLIEST: the
        partition's frames from its first; a watch started after its state was lost: the first fed)."""
        self.rules_sha256 = rules.sha256
        self.rules = [r for r in rules.rules if r.kind in FRAME_KINDS]
        self.silences = [r for r in rules.rules if r.kind == "silent"]
        self.conditions = {r.name: frame_condition(r) for r in self.rules if r.kind != "frozen"}
        self.seen_since = seen_since  # every frame captured since then was fed
        self.sources: dict[str, Source] = {}

    @property
    def idle(self) -> bool:
        return not self.rules and not self.silences

    def feed(self, source_id: str, frames: list[EventFrame]) -> list[Event]:
        """Feed a source's new frames; the alerts they fire. Frames not newer than the source's latest
        are passed over (the hourly evaluation decides on them)."""
        fired = []
        for frame in sorted(frames, key=lambda f: (f.seconds, f.frame_id)):
            state = self.sources.get(source_id)
            if state is not None and (frame.seconds, frame.frame_id) <= (state.last_seconds,
                                                                         state.last_frame):
                continue
            if state is None:
                state = self.sources[source_id] = Source(frame.seconds, frame.frame_id)
            else:
                fired += self._silence(source_id, state, frame.seconds, frame)
            fired += self._frame(source_id, state, frame)
            state.last_seconds, state.last_frame, state.silenced = frame.seconds, frame.frame_id, []
        return fired

    def time_passed(self, latest: float) -> list[Event]:
        """Silences a frame captured at `latest` shows (a frame of another source of the partition)."""
        fired = []
        for source_id, state in sorted(self.sources.items()):
            if latest > state.last_seconds:
                fired += self._silence(source_id, state, latest, None)
        self._forget(latest)
        return fired

    def _frame(self, source_id: str, state: Source, frame: EventFrame) -> list[Event]:
        hour, fired = hour_of(frame.seconds), []
        for rule in self.rules:
            if not rule.watches(source_id):
                continue
            windows = state.windows.setdefault(rule.name, {})
            for stale in [h for h in windows if float(h) < hour]:
                del windows[stale]
            for window_hour in (hour, hour + HOUR):
                if str(window_hour) not in windows:
                    # complete only when every frame of the source since the history's start was seen
                    blind = self.seen_since > window_hour - HOUR
                    windows[str(window_hour)] = Window(window_hour, blind=blind)
            found = None
            for window_hour in (hour, hour + HOUR):
                found = windows[str(window_hour)].feed(rule, frame, self.conditions.get(rule.name)) or found
            if found is not None:
                fired.append(episode_event(rule, source_id, frame, found))
        return fired

    def _silence(self, source_id: str, state: Source, until: float, after: EventFrame | None) -> list[Event]:
        fired = []
        for rule in self.silences:
            at = state.last_seconds + rule.minutes * 60
            # The hourly evaluation of the silence's hour reads frames up to two hours on from its start.
            if (rule.watches(source_id) and rule.name not in state.silenced and until >= at
                    and until < hour_of(at) + 2 * HOUR):
                before = EventFrame(state.last_frame, state.last_seconds, "")
                fired.append(silence_event(rule, source_id, before, after))
                state.silenced.append(rule.name)
        return fired

    def _forget(self, latest: float) -> None:
        """Sources silent for three hours can fire nothing more until they send again, and then their
        history is empty: they are forgotten (the state stays a few numbers per source that sends)."""
        for source_id in [s for s, st in self.sources.items() if st.last_seconds < latest - 3 * HOUR]:
            del self.sources[source_id]

    def to_json(self) -> bytes:
        sources = {s: asdict(st) for s, st in self.sources.items()}
        return json.dumps({"seen_since": None if self.seen_since == EARLIEST else self.seen_since,
                           "rules_sha256": self.rules_sha256, "sources": sources}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, rules: AlertRules, data: bytes) -> Watch | None:
        """The saved watch, or None when it was kept under other rules (its state says nothing of these)."""
        saved = json.loads(data)
        if saved.get("rules_sha256") != rules.sha256:
            return None
        watch = cls(rules, EARLIEST if saved["seen_since"] is None else float(saved["seen_since"]))
        for source_id, st in saved["sources"].items():
            windows = {rule: {hour: Window(**w) for hour, w in hours.items()}
                       for rule, hours in st.pop("windows").items()}
            watch.sources[source_id] = Source(**st, windows=windows)
        return watch
