"""Tracking and counting as frames come, for the track rules (zone_enter, line_cross, dwell) of the live
lane: the steps the evaluator (vision/evaluator.py) takes, as the hourly evaluation makes them from the
stored track ids (`evaluator.counted_steps`).

Each source is tracked as its frames are fed, the way the hourly build tracks it (vision/tracking.py:
ids from the capture time of the frame that confirmed a track), and its tracks counted on the lines and
zones as the hourly evaluation counts them, so a crossing, a zone entered or a dwell reached fires the
alert with the key the hourly evaluation gives the same crossing or visit. The hourly rebuild stays the
truth: it tracks the same frames again, and its ids are the ones given here wherever the two trackers saw
the same frames the same way; where they differ (a frame late or missing here, a track re-associated over
a restart) it raises its own alert.

Between runs a `TrackWatch` is kept as JSON (`to_json`, `from_json`): each source's last seconds of
frames with the ids given to them (replayed to take the tracker up where it was, as the hourly build
replays the end of what is stored) and its open zone visits. A source that sent a frame the watch was not
fed in the seconds before the first it was fed (a watch started after its state was lost) starts blind:
tracks confirmed in its first seconds may be objects the hourly tracker knows from before, with other ids,
and fire nothing here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime

from imgpipeline.vision import counting
from imgpipeline.vision.alert_rules import AlertRules
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.evaluator import EARLIEST, counted, inside
from imgpipeline.vision.events import EventFrame
from imgpipeline.vision.rules import Step, TrackKind, kind_of
from imgpipeline.vision.tracking import Continued, TrackedFrame, TrackerSettings, frame_rate
from imgpipeline.vision.zones import Zones

FORGET_S = 3600.0  # a source this long without a frame has no track left to go on
CROSSED_S = 26 * 3600.0  # a source's crossings are kept per hour this long (a day and the hours before)
# A source's first frame says nothing of its rate: a watch that did not see what came before takes it to be
# sampled this slowly (every 2 s) to judge how long tracks from before may go on.
SLOWEST_RATE = 0.5
# The tracker starts again from the tail when the source's rate changes by more than this (a rate that
# jitters within it keeps the tracker going).
RATE_CHANGE = 0.01


class SourceTracks:
    """One source's tracking, counting and recent frames."""

    def __init__(self, zones: Zones, source_id: str, settings: TrackerSettings, blind_until: float):
        self.settings, self.blind_until = settings, blind_until
        self.counter = counting.Counter(zones, source_id)
        self.tail: list[tuple[TrackedFrame, EventFrame]] = []  # the last seconds fed, with their ids
        self.tracking: Continued | None = None
        self.rate = 0.0
        # Its crossings counted here per event hour (ISO UTC), line and class: [in, out], the last CROSSED_S
        # (what MQTT publishes of the hours the hourly build has not counted yet: defs/alerts/mqtt_out.py).
        self.crossed: dict[str, dict[str, dict[str, list[int]]]] = {}

    @property
    def last(self) -> tuple[float, str]:
        frame = self.tail[-1][1]
        return frame.seconds, frame.frame_id

    def step(self, frame: EventFrame) -> Step:
        """Track and count the source's next frame: the frame with its ids, its crossings, and the open
        visits it is in."""
        tracked = TrackedFrame(frame.frame_id, frame.seconds, list(frame.seen))
        rate = frame_rate([*(f.seconds for f, _ in self.tail), frame.seconds])
        if self.tracking is None or abs(rate - self.rate) > RATE_CHANGE * self.rate:
            # The tracker's rate is the source's, measured over the last seconds as the hourly build
            # measures it over its frames; when it changes, the tracker starts again from the tail, as
            # that build would.
            self.rate, self.tracking = rate, Continued(self.settings, rate)
            self.tracking.replay([f for f, _ in self.tail])
        ids = self.tracking.step(tracked)
        tracked.recorded = ids
        given = EventFrame(frame.frame_id, frame.seconds, frame.status, frame.brightness, frame.sha256,
                           frame.width, frame.height,
                           [s.with_track(ids.get(s.index)) for s in frame.seen])
        self.tail.append((tracked, given))
        since = frame.seconds - self.settings.replay_for(rate)
        self.tail = [(f, g) for f, g in self.tail if f.seconds >= since]
        crossings, _ = self.counter.step(counted(given))
        self.count(frame.seconds, crossings)
        found = inside(self.counter, frame.frame_id)
        for key, visit in list(self.counter.open.items()):
            if visit.end < since:
                del self.counter.open[key]  # its track is lost for good: no frame can go on with it
        return Step(given, crossings, found, self.blind_until)

    def count(self, seconds: float, crossings) -> None:
        if not crossings:
            return
        hour = datetime.fromtimestamp(seconds - seconds % 3600, UTC).isoformat().replace("+00:00", "Z")
        lines = self.crossed.setdefault(hour, {})
        for c in crossings:
            lines.setdefault(c.line, {}).setdefault(c.class_name, [0, 0])[c.way == "out"] += 1
        oldest = datetime.fromtimestamp(seconds - CROSSED_S, UTC).isoformat().replace("+00:00", "Z")
        self.crossed = {h: counts for h, counts in self.crossed.items() if h >= oldest[:13]}

    def to_dict(self) -> dict:
        tail = [[g.frame_id, g.seconds, g.width, g.height,
                 [[s.index, s.class_name, s.confidence, list(s.box), s.track_id] for s in g.seen]]
                for _, g in self.tail]
        visits = [[v.zone, v.track_id, v.class_name, v.start, v.end, [list(f) for f in v.frames]]
                  for v in self.counter.open.values()]
        return {"blind_until": None if self.blind_until == EARLIEST else self.blind_until,
                "tail": tail, "visits": visits, "crossed": self.crossed}

    @classmethod
    def from_dict(cls, zones: Zones, source_id: str, settings: TrackerSettings, saved: dict) -> SourceTracks:
        until = saved["blind_until"]
        tracks = cls(zones, source_id, settings, EARLIEST if until is None else float(until))
        for frame_id, seconds, width, height, seen in saved["tail"]:
            given = EventFrame(str(frame_id), float(seconds), "detected", None, None, width, height, [
                Detection(index=int(i), class_name=str(c), confidence=float(p),
                          box=tuple(int(v) for v in box), track_id=None if t is None else int(t))
                for i, c, p, box, t in seen])
            tracked = TrackedFrame(given.frame_id, given.seconds, list(given.seen),
                                   {s.index: s.track_id for s in given.seen if s.track_id is not None})
            tracks.tail.append((tracked, given))
            # The lines learn where the tail's tracks were; their visits are taken up as saved.
            tracks.counter.step(counted(given), lines_only=True)
        for zone, track_id, class_name, start, end, frames in saved["visits"]:
            tracks.counter.open[str(zone), int(track_id)] = counting.Visit(
                str(zone), int(track_id), str(class_name), float(start), float(end),
                [(float(s), str(f)) for s, f in frames])
        tracks.crossed = {str(h): {str(line): {str(c): [int(n) for n in ways][:2]
                                               for c, ways in classes.items()}
                                   for line, classes in lines.items()}
                          for h, lines in saved.get("crossed", {}).items()}  # none in states saved before
        return tracks


class TrackWatch:
    """The tracking and counting of the sources of one partition of the frames topic that a track rule
    watches."""

    def __init__(self, rules: AlertRules, zones: Zones, settings: TrackerSettings,
                 seen_since: float = EARLIEST, read: dict[str, float] | None = None):
        """`seen_since`: the capture time after which every frame of the partition is fed (EARLIEST: from
        its first frame; a watch started after its state was lost: the last frame it was not fed, or the
        start of what it read). `read`: the same for the sources whose history a warmed watch read (kept
        until each is first fed; a watch read back goes by `seen_since`)."""
        self.rules_sha256, self.zones_sha256 = rules.sha256, zones.sha256
        # Only sources a track rule watches are tracked here (tracking every source would cost the lane a
        # tenth of its throughput); there a class rule's alert names its object's track too.
        self.rules = [r for r in rules.rules if isinstance(kind_of(r), TrackKind)]
        self.zones, self.settings, self.seen_since = zones, settings, seen_since
        self.read = dict(read or {})
        self.sources: dict[str, SourceTracks] = {}

    @property
    def idle(self) -> bool:
        return not self.rules

    def feed(self, source_id: str, frames: list[EventFrame]) -> list[Step]:
        """A source's new frames as the evaluator takes them: those tracked with their ids, crossings and
        visits. Frames not newer than the source's latest are passed on as they are, and so are frames
        that were not detected (the tracker is told nothing of them) and the frames of a source no track
        rule is drawn for."""
        spec = self.zones.of(source_id)
        if not any(r.watches(source_id) and kind_of(r).drawn(r, spec) for r in self.rules):
            return [Step(frame) for frame in frames]
        steps = []
        for frame in sorted(frames, key=lambda f: (f.seconds, f.frame_id)):
            state = self.sources.get(source_id)
            if frame.status != "detected" or (state is not None and (frame.seconds, frame.frame_id)
                                               <= state.last):
                steps.append(Step(frame))
                continue
            if state is None:
                # Tracks from before may go on into the first seconds fed: blind unless all of those
                # seconds before were seen (and the source sent nothing in them).
                window = self.settings.replay_for(SLOWEST_RATE)
                seen = self.read.get(source_id, self.seen_since)
                until = frame.seconds + window if frame.seconds - window < seen else EARLIEST
                state = self.sources[source_id] = SourceTracks(self.zones, source_id, self.settings, until)
            steps.append(state.step(frame))
        return steps

    def forget(self, latest: float) -> None:
        for source_id in [s for s, st in self.sources.items() if st.last[0] < latest - FORGET_S]:
            del self.sources[source_id]

    def to_json(self) -> bytes:
        return json.dumps({"seen_since": None if self.seen_since == EARLIEST else self.seen_since,
                           "rules_sha256": self.rules_sha256, "zones_sha256": self.zones_sha256,
                           "settings": asdict(self.settings),
                           "sources": {s: st.to_dict() for s, st in self.sources.items()}},
                          sort_keys=True).encode()

    @classmethod
    def from_json(cls, rules: AlertRules, zones: Zones, settings: TrackerSettings,
                  data: bytes) -> TrackWatch | None:
        """The saved watch, or None when it was kept under other rules, zones or tracker settings."""
        saved = json.loads(data)
        if (saved.get("rules_sha256"), saved.get("zones_sha256"), saved.get("settings")) != (
                rules.sha256, zones.sha256, asdict(settings)):
            return None
        since = saved["seen_since"]
        watch = cls(rules, zones, settings, EARLIEST if since is None else float(since))
        for source_id, st in saved["sources"].items():
            watch.sources[source_id] = SourceTracks.from_dict(zones, source_id, settings, st)
        return watch
