"""The one evaluator of alert rules: fed each source's frames in capture order, it fires what the rules
say, for the hourly `alerts` asset (`evaluate`: fresh, over an hour and the hour before it), the live lane
(kept between ranges, saved as JSON), backtests and comparisons alike. What a kind of rule fires on is
its module's (`vision/rules/`); this module keeps the state the kinds share.

Every alert has a key that says what happened (rule, source, and the frame, track, line or zone it is
about), so the same frames evaluated again give the same alerts. An hour's alerts are those that fire in
it; rules look back at most an hour (cooldowns, dwell and silence are shorter than that), so the hour
before is all the history they need. The evaluator keeps, for each source and frame rule, that state for
the two hours a new frame can count in (its own hour, with the hour before as history, and the next, with
its own as history), so a frame fed in capture order fires what the hourly evaluation gives it, whether
the evaluator was made for that hour or has been fed for days. Its state is a few numbers per source and
rule, whatever the history.

What it cannot know it leaves to the hourly evaluation, which stays the truth: an hour whose history it
did not see whole (`seen_since`: its state lost, or started mid-hour) fires nothing here; a frame older
than its source's latest (late, or sent again) is not fed. A silence is raised when the source's next
frame, or a frame of another source (`time_passed`), shows the time has passed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

from imgpipeline.vision import counting
from imgpipeline.vision.alert_rules import AlertRules
from imgpipeline.vision.events import Event, EventFrame
from imgpipeline.vision.rules import FrameKind, SilenceKind, Step, TrackKind, kind_of
from imgpipeline.vision.tracking import IDS_PER_MS
from imgpipeline.vision.zones import Zones

HOUR = 3600.0
EARLIEST = -math.inf


def hour_of(seconds: float) -> float:
    return math.floor(seconds / HOUR) * HOUR


def confirmed_at(track_id: int) -> float:
    """The capture time (seconds) of the frame that confirmed a track: ids are made of it."""
    return track_id // IDS_PER_MS / 1000


@dataclass
class Window:
    """One frame rule's evaluation of one source for the hour starting at `hour`, over the frames from the
    hour before on; `blind` when those frames were not all seen."""

    hour: float
    blind: bool = False
    fed: bool = False
    before: bool = False  # the condition held on the previous frame
    last: float | None = None  # when it last held
    sha256: str | None = None  # frozen: the previous frame's bytes …
    run: int = 0  # … identical frames in a row up to it (0 while the run may have begun earlier)
    unknown: bool = False

    def feed(self, rule, frame: EventFrame) -> tuple | None:
        """Feed the next frame; what it fires in this window's hour (detail and subject), else None. A run
        of frames where the rule holds is one episode, however far apart they come, and an episode that
        starts within the cooldown after the last ended is the same alert (a condition that flickers)."""
        found = kind_of(rule).holds(rule, frame, self)
        starts = False
        if found is None:
            self.before = False
        else:
            starts = not self.before and (self.last is None or frame.seconds - self.last > rule.cooldown_s)
            self.before, self.last = True, frame.seconds
        self.fed = True
        fires = starts and not self.blind and self.hour <= frame.seconds < self.hour + HOUR
        return found if fires else None


@dataclass
class Source:
    last_seconds: float
    last_frame: str
    silenced: list[str] = field(default_factory=list)  # silent rules raised since the last frame
    windows: dict[str, dict[str, Window]] = field(default_factory=dict)  # rule: hour: window


class Evaluator:
    """The rules' state for a set of sources (the live lane: those of one partition of the frames topic)."""

    def __init__(self, rules: AlertRules, seen_since: float = EARLIEST):
        """`seen_since`: the capture time since which every frame of the sources is fed (EARLIEST: from
        their first; an evaluator started after its state was lost: the first fed)."""
        self.rules_sha256 = rules.sha256
        self.frame_rules = [r for r in rules.rules if isinstance(kind_of(r), FrameKind)]
        self.silences = [r for r in rules.rules if isinstance(kind_of(r), SilenceKind)]
        self.track_rules = [r for r in rules.rules if isinstance(kind_of(r), TrackKind)]
        self.seen_since = seen_since  # every frame captured since then was fed
        self.sources: dict[str, Source] = {}

    @property
    def idle(self) -> bool:
        return not self.frame_rules and not self.silences and not self.track_rules

    def feed(self, source_id: str, steps: list[Step]) -> list[Event]:
        """Feed a source's next frames (each with what tracking and counting found, when they were); the
        alerts they fire. Frames not newer than the source's latest are passed over (the hourly
        evaluation decides on them)."""
        fired = []
        for step in sorted(steps, key=lambda s: (s.frame.seconds, s.frame.frame_id)):
            frame, state = step.frame, self.sources.get(source_id)
            if state is not None and (frame.seconds, frame.frame_id) <= (state.last_seconds,
                                                                         state.last_frame):
                continue
            if state is None:
                state = self.sources[source_id] = Source(frame.seconds, frame.frame_id)
            else:
                fired += self._silence(source_id, state, frame.seconds, frame)
            fired += self._frame(source_id, state, frame)
            fired += self._tracks(source_id, step)
            state.last_seconds, state.last_frame, state.silenced = frame.seconds, frame.frame_id, []
        return fired

    def time_passed(self, latest: float) -> list[Event]:
        """Silences a frame captured at `latest` shows (a frame of another source)."""
        fired = []
        for source_id, state in sorted(self.sources.items()):
            if latest > state.last_seconds:
                fired += self._silence(source_id, state, latest, None)
        self._forget(latest)
        return fired

    def _frame(self, source_id: str, state: Source, frame: EventFrame) -> list[Event]:
        hour, fired = hour_of(frame.seconds), []
        for rule in self.frame_rules:
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
                found = windows[str(window_hour)].feed(rule, frame) or found
            if found is not None:
                fired.append(kind_of(rule).event(rule, source_id, frame, found))
        return fired

    def _tracks(self, source_id: str, step: Step) -> list[Event]:
        if not step.crossings and not step.inside:
            return []
        fired = [e for rule in self.track_rules if rule.watches(source_id)
                 for e in kind_of(rule).fires(rule, source_id, step)]
        return [e for e in fired if e.track_id is None or confirmed_at(e.track_id) >= step.blind_until]

    def _silence(self, source_id: str, state: Source, until: float, after: EventFrame | None) -> list[Event]:
        fired = []
        for rule in self.silences:
            at = kind_of(rule).due(rule, state.last_seconds)
            # The hourly evaluation of the silence's hour reads frames up to two hours on from its start.
            if (rule.watches(source_id) and rule.name not in state.silenced and until >= at
                    and until < hour_of(at) + 2 * HOUR):
                before = EventFrame(state.last_frame, state.last_seconds, "")
                fired.append(kind_of(rule).event(rule, source_id, before, after))
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
    def from_json(cls, rules: AlertRules, data: bytes) -> Evaluator | None:
        """The saved evaluator, or None when it was kept under other rules (its state says nothing of
        these)."""
        saved = json.loads(data)
        if saved.get("rules_sha256") != rules.sha256:
            return None
        evaluator = cls(rules, EARLIEST if saved["seen_since"] is None else float(saved["seen_since"]))
        for source_id, st in saved["sources"].items():
            windows = {rule: {hour: Window(**w) for hour, w in hours.items()}
                       for rule, hours in st.pop("windows").items()}
            evaluator.sources[source_id] = Source(**st, windows=windows)
        return evaluator


def evaluate(rules: AlertRules, frames: dict[str, list[EventFrame]], zones: Zones | None, start: float,
             end: float) -> list[Event]:
    """The alerts that fire in [start, end) from each source's frames (given from the hour before `start`,
    and after `end` where known: silence is known once later frames came), their detections' track ids
    as stored: a fresh evaluator fed them in capture order."""
    evaluator = Evaluator(rules)
    found = []
    # Records of no source (in files landed before stand-ins) fire nothing, but their times count in `latest`.
    for source in sorted(s for s in frames if s is not None):
        ordered = sorted(frames[source], key=lambda f: (f.seconds, f.frame_id))
        counted = zones is not None and any(r.watches(source) for r in evaluator.track_rules)
        found += evaluator.feed(source, counted_steps(ordered, zones, source) if counted
                                else [Step(f) for f in ordered])
    latest = max((f.seconds for fs in frames.values() for f in fs), default=None)
    if latest is not None:
        found += evaluator.time_passed(latest)
    in_range = [e for e in found if start <= e.seconds < end]
    return sorted(in_range, key=lambda e: (e.seconds, e.source_id, e.rule, e.key))


def counted_steps(frames: list[EventFrame], zones: Zones, source: str) -> list[Step]:
    """A source's frames in capture order with what their stored tracks did on its lines and zones."""
    counter, steps = counting.Counter(zones, source), []
    for frame in frames:
        if frame.status != "detected":
            steps.append(Step(frame))
            continue
        crossings, _ = counter.step(counted(frame))
        steps.append(Step(frame, crossings, inside(counter, frame.frame_id)))
    return steps


def counted(frame: EventFrame) -> counting.CountedFrame:
    """A frame as counting takes it: its tracked detections only."""
    return counting.CountedFrame(frame.frame_id, frame.seconds, frame.width, frame.height,
                                 [s for s in frame.seen if s.track_id is not None])


def inside(counter: counting.Counter, frame_id: str) -> list[counting.Visit]:
    """The open visits a frame is in, as they are at that frame (the counter goes on with them), each cut
    to its entry and last two frames: all a rule reads of it."""
    for visit in counter.open.values():
        del visit.frames[1:-2]
    return [replace(v, frames=list(v.frames)) for v in counter.open.values() if v.frames[-1][1] == frame_id]
