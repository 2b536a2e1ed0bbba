"""Tracking: a tracker of Roboflow's `trackers` (SORT unless another is configured) over one source's
stored detections, in capture order.

One tracker per class, so a cyclist's person box and bicycle box never swap identities. Time comes
from the frames' capture times, not their count: the tracker's frame rate is the source's own
sampling rate, and a track is kept while lost for `lost_s` seconds whatever that rate is.

A track id is given when the tracker confirms a track (`minimum_frames` consecutive detections);
detections before that, and detections never confirmed, have none. Ids are derived from the capture
time of the frame that confirmed the track (milliseconds × 1000 + its order in that frame), so they
are unique within a source and the same whenever the same detections are tracked again.

Tracking an hour starts by replaying the end of the previous hour as it is stored, with the ids it
was given: a tracker confirmed there keeps its recorded id, so an object crossing the hour keeps
one id.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from imgpipeline.vision.detection import Detection

# Ids are milliseconds × this + the order of the new tracks confirmed in one millisecond.
IDS_PER_MS = 1000
# A track is kept while lost for at least this many of the source's frame intervals: a source sampled
# every 2 s still continues its tracks over a missed frame.
LOST_INTERVALS = 2.5


# The trackers of Roboflow's `trackers` a source can be tracked by (the tracking resource picks one).
# BoT-SORT runs without camera-motion compensation (it would need the images; tracking reads detections).
TRACKERS = {"bytetrack": "ByteTrackTracker", "ocsort": "OCSORTTracker", "botsort": "BoTSORTTracker",
            "sort": "SORTTracker"}


@dataclass(frozen=True)
class TrackerSettings:
    kind: str = "sort"  # one of TRACKERS
    lost_s: float = 1.0  # how long a track unseen is kept for re-association
    minimum_frames: int = 3  # consecutive detections before a track is confirmed (and counted)
    activation: float = 0.5  # confidence a detection needs to start a track
    high_confidence: float = 0.5  # first association stage above, second stage below
    minimum_iou: float = 0.1
    replay_s: float = 10.0  # how much of the previous hour is replayed to continue its tracks (at least)

    def lost_for(self, rate: float) -> float:
        """Seconds a track may go unseen at a sampling rate: lost_s, or longer for slow sources."""
        return max(self.lost_s, LOST_INTERVALS / rate)

    def replay_for(self, rate: float) -> float:
        """Seconds of the previous hour to replay: enough to confirm a track again and to keep it lost."""
        return max(self.replay_s, self.lost_for(rate) + (self.minimum_frames + 1) / rate)


@dataclass
class TrackedFrame:
    frame_id: str
    seconds: float  # capture time, seconds since the epoch
    observations: list[Detection]  # each with its index (detection_index within the frame)
    # Replayed frames only: detection_index → the track id stored for it (None when unconfirmed).
    recorded: dict[int, int | None] = field(default_factory=dict)


def frame_rate(seconds: Iterable[float], default: float = 5.0) -> float:
    """The sampling rate of a source: 1 / the median gap between consecutive capture times."""
    times = sorted(seconds)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
    return 1.0 / float(np.median(gaps)) if gaps else default


def new_tracker(s: TrackerSettings, rate: float):
    """A tracker of the settings' kind for a source sampled at `rate`, each given the settings it takes."""
    import inspect

    import trackers

    if s.kind not in TRACKERS:
        raise ValueError(f"unknown tracker {s.kind!r}; use one of {', '.join(TRACKERS)}")
    cls = getattr(trackers, TRACKERS[s.kind])
    offered = {
        # `lost_track_buffer` is in frames at 30 frames/s; with timestamps it means seconds × 30.
        "lost_track_buffer": max(1, round(s.lost_for(rate) * 30)),
        "frame_rate": rate,
        "track_activation_threshold": s.activation,
        "minimum_consecutive_frames": s.minimum_frames,
        "minimum_iou_threshold": s.minimum_iou,
        "high_conf_det_threshold": s.high_confidence,
        "enable_cmc": False,
        # A class's tracker starts when the class is first seen: a track there waits its frames like any.
        "instant_first_frame_activation": False,
    }
    taken = inspect.signature(cls).parameters
    return cls(**{name: value for name, value in offered.items() if name in taken})


class SourceTracker:
    """Per-class trackers of one source; `step` gives each detection its tracker's id."""

    def __init__(self, settings: TrackerSettings, rate: float):
        self.settings, self.rate = settings, rate
        self.trackers: dict[str, object] = {}
        self.last = float("-inf")

    def _tracker(self, class_name: str):
        if class_name not in self.trackers:
            self.trackers[class_name] = new_tracker(self.settings, self.rate)
        return self.trackers[class_name]

    def step(self, frame: TrackedFrame) -> dict[int, tuple[str, int]]:
        """detection_index → (class, the tracker's id) for the confirmed detections of one frame.

        Every class's tracker sees every frame (an empty one too), so lost tracks age in time.
        """
        import supervision as sv

        by_class: dict[str, list[Detection]] = defaultdict(list)
        for observation in frame.observations:
            by_class[observation.class_name].append(observation)
        for class_name in by_class:
            self._tracker(class_name)
        # Time must advance for the tracker to take a frame: two frames of one source captured in the
        # same instant (a burst, a clock's resolution) are taken a microsecond apart, in id order.
        self.last = seconds = max(frame.seconds, self.last + 1e-6)
        confirmed = {}
        for class_name in sorted(self.trackers):
            observations = by_class.get(class_name, [])
            tracker = self.trackers[class_name]
            if not observations and not tracker.tracks:
                continue  # nothing to age or match: the next update measures time from the last one
            detections = sv.Detections(
                xyxy=np.array(
                    [[x, y, x + w, y + h] for x, y, w, h in (o.box for o in observations)], dtype=np.float32
                ).reshape(-1, 4),
                confidence=np.array([o.confidence for o in observations], dtype=np.float32),
                data={"index": np.array([o.index for o in observations], dtype=np.int64)},
            )
            result = tracker.update(detections, timestamp=seconds)
            if len(result) == 0:
                continue
            for index, tracker_id in zip(result.data["index"], result.tracker_id, strict=True):
                if tracker_id >= 0:
                    confirmed[int(index)] = (class_name, int(tracker_id))
        return confirmed


class _Ids:
    """Track ids from the capture time of the confirming frame, in detection order within it."""

    def __init__(self):
        self.ms, self.next = None, 0

    def new(self, seconds: float) -> int:
        ms = round(seconds * 1000)
        if ms != self.ms:
            self.ms, self.next = ms, 0
        self.next += 1
        return ms * IDS_PER_MS + self.next - 1


class Continued:
    """One source's tracking as it goes on: the tracker, the ids it gave, and new ids as tracks confirm.

    `replay` feeds stored frames with the ids recorded for them (a tracker confirmed there takes the id
    recorded most often for its detections); `step` then gives each new frame's confirmed detections
    their ids. The hourly build replays the end of what is stored before each batch; the fast lane keeps
    one going between ranges, and replays its saved tail when it starts again.
    """

    def __init__(self, settings: TrackerSettings, rate: float):
        self.tracker = SourceTracker(settings, rate)
        self.ids: dict[tuple[str, int], int] = {}
        self.allocate = _Ids()

    def replay(self, frames: list[TrackedFrame]) -> None:
        votes: dict[tuple[str, int], Counter] = defaultdict(Counter)
        for frame in frames:
            for index, key in self.tracker.step(frame).items():
                if (recorded := frame.recorded.get(index)) is not None:
                    votes[key][recorded] += 1
        self.ids = _continued(votes)

    def step(self, frame: TrackedFrame) -> dict[int, int]:
        """detection_index → track id of the frame's confirmed detections."""
        given = {}
        for index, key in sorted(self.tracker.step(frame).items()):
            if key not in self.ids:
                self.ids[key] = self.allocate.new(frame.seconds)
            given[index] = self.ids[key]
        return given


def assign(
    replay: list[TrackedFrame], frames: list[TrackedFrame], settings: TrackerSettings
) -> dict[tuple[str, int], int]:
    """Track ids of one source's confirmed detections in `frames`: (frame_id, detection_index) → id.

    `replay` is the stored end of the previous hour with its recorded ids; both lists are in capture
    order. A tracker confirmed in the replay takes the id recorded most often for its detections.
    """
    tracking = Continued(settings, frame_rate(f.seconds for f in [*replay, *frames]))
    tracking.replay(replay)
    return {(frame.frame_id, index): track_id for frame in frames
            for index, track_id in tracking.step(frame).items()}


def _continued(votes: dict[tuple[str, int], Counter]) -> dict[tuple[str, int], int]:
    """Tracker → recorded id, one to one, the best-supported pairs first."""
    pairs = sorted(((-n, recorded, key) for key, counts in votes.items() for recorded, n in counts.items()))
    taken, ids = set(), {}
    for _, recorded, key in pairs:
        if key not in ids and recorded not in taken:
            ids[key] = recorded
            taken.add(recorded)
    return ids
