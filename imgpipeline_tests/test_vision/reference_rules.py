"""The rules' meaning written out plainly, as the reference the evaluator is checked against: each hour
evaluated by itself over the frames of the hour before and after it, every episode found over the
frames in a list, runs of identical frames counted from the first, zone visits and line crossings
counted by `counting.count` over the hour (vision/evaluator.py computes the same as frames come, with
a few numbers of state per source and rule)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from imgpipeline.vision import counting
from imgpipeline.vision.alert_rules import AlertRules
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.events import Event, EventFrame
from imgpipeline.vision.zones import Zones


def evaluate(rules: AlertRules, frames: dict[str, list[EventFrame]], zones: Zones, start: float,
             end: float) -> list[Event]:
    """The alerts that fire in [start, end) from each source's frames in capture order (given from the
    hour before `start`, and after `end` where known: silence is known once later frames came)."""
    latest = max((f.seconds for fs in frames.values() for f in fs), default=None)
    found = []
    # Records of no source (in files landed before stand-ins) fire nothing, but their times count in `latest`.
    for source in sorted(s for s in frames if s is not None):
        source_frames = sorted(frames[source], key=lambda f: (f.seconds, f.frame_id))
        mine = [r for r in rules.rules if r.watches(source)]
        counts = None
        if any(r.kind in TRACK_KINDS for r in mine):
            counts = counting.count(_counted(source_frames), zones, source, start - 3600, end)
        for rule in mine:
            for event in _fire(rule, source, source_frames, counts, latest, start):
                if start <= event.seconds < end:
                    found.append(event)
    return sorted(found, key=lambda e: (e.seconds, e.source_id, e.rule, e.key))


def _fire(rule, source: str, frames: list[EventFrame], counts, latest: float | None,
          start: float) -> Iterable[Event]:
    if rule.kind in FRAME_KINDS:
        condition = {"class": _class_seen, "count": _crowd, "dark": _dark, "frozen": _frozen}[rule.kind]
        holds = condition(rule, frames, start)
        for frame, found in _episodes(frames, holds, rule.cooldown_s):
            yield episode_event(rule, source, frame, found)
    elif rule.kind == "silent":
        yield from _silences(rule, source, frames, latest)
    elif rule.kind == "line_cross":
        by_id = {f.frame_id: f for f in frames}
        for c in counts.crossings:
            if crosses(rule, c):
                yield crossing_event(rule, source, c, by_id[c.frame_id])
    else:  # zone_enter, dwell
        by_id = {f.frame_id: f for f in frames}
        for visit in counts.visits:
            if not visits(rule, visit):
                continue
            if rule.kind == "zone_enter":
                yield entry_event(rule, source, visit, by_id[visit.frames[0][1]])
                continue
            over = dwelt(rule, visit)
            if over is not None:
                yield dwell_event(rule, source, visit, over, by_id[over[1]])


# Track rules: what a line crossing or a zone visit fires, whether found hour by hour or as frames come.
TRACK_KINDS = ("zone_enter", "line_cross", "dwell")


def crosses(rule, crossing: counting.Crossing) -> bool:
    return (crossing.line == rule.line and rule.direction in ("any", crossing.way)
            and _wanted(rule, crossing.class_name))


def crossing_event(rule, source: str, c: counting.Crossing, frame: EventFrame) -> Event:
    seen = _tracked(frame, c.track_id)
    return Event(rule.name, source, f"{rule.name}|{source}|line|{c.line}|{c.track_id}|{c.way}|{c.frame_id}",
                 c.seconds, c.frame_id, (c.frame_id,),
                 f"{c.class_name} crossed line {c.line} ({c.way})", *_subject(seen),
                 occurrence=seen and f"{rule.name}|{source}|line|{c.line}|#{seen.index}|{c.way}|{c.frame_id}")


def visits(rule, visit: counting.Visit) -> bool:
    return visit.zone == rule.zone and _wanted(rule, visit.class_name)


def _visit_key(rule, source: str, visit: counting.Visit, seen=None) -> str:
    """The visit's key; with `seen`, its occurrence (the detection's index in place of the track id)."""
    who = visit.track_id if seen is None else f"#{seen.index}"
    return f"{rule.name}|{source}|zone|{visit.zone}|{who}|{visit.frames[0][1]}"


def entry_event(rule, source: str, visit: counting.Visit, entry: EventFrame) -> Event:
    entered_at, entry_id = visit.frames[0]
    seen = _tracked(entry, visit.track_id)
    return Event(rule.name, source, _visit_key(rule, source, visit), entered_at, entry_id, (entry_id,),
                 f"{visit.class_name} entered zone {visit.zone}", *_subject(seen),
                 occurrence=seen and _visit_key(rule, source, visit, seen))


def dwelt(rule, visit: counting.Visit) -> tuple[float, str] | None:
    """The first frame of a visit (seconds, frame id) at which it had lasted the dwell rule's seconds."""
    return next(((s, fid) for s, fid in visit.frames if s - visit.start >= rule.seconds), None)


def dwell_event(rule, source: str, visit: counting.Visit, over: tuple[float, str],
                frame: EventFrame) -> Event:
    entry = visit.frames[0][1]
    seen = _tracked(frame, visit.track_id)
    return Event(rule.name, source, _visit_key(rule, source, visit), over[0], over[1], (entry, over[1]),
                 f"{visit.class_name} in zone {visit.zone} for {rule.seconds:g} s", *_subject(seen),
                 occurrence=seen and _visit_key(rule, source, visit, seen))


# Rules that a frame fires by itself, given its source's frames before it (episodes over a condition).
FRAME_KINDS = ("class", "count", "dark", "frozen")


def episode_event(rule, source: str, frame: EventFrame, found: tuple) -> Event:
    """The alert of an episode of a frame rule that starts at `frame` (`found`: its detail and subject)."""
    detail, subject = found
    return Event(rule.name, source, f"{rule.name}|{source}|frame|{frame.frame_id}", frame.seconds,
                 frame.frame_id, (frame.frame_id,), detail, *_subject(subject))


def frame_condition(rule) -> Callable[[EventFrame], tuple | None]:
    """Whether a class, count or dark rule holds on a frame by itself (its detail and subject, else None);
    a frozen rule's condition needs the frames before (`frozen_detail`)."""
    return {"class": _class_seen, "count": _crowd, "dark": _dark}[rule.kind](rule, [], 0.0)


def frozen_detail(run: int) -> tuple:
    return f"{run} identical frames in a row", None


def _episodes(frames: list[EventFrame], holds: Callable, cooldown_s: float):
    """Frames where the condition starts to hold: it holds there and not on the source's frame before (a
    run of frames where it holds is one episode, however far apart they come), and no earlier episode
    ended within the cooldown before (a condition that flickers is one alert)."""
    last, before = None, False
    for frame in frames:
        found = holds(frame)
        if found is None:
            before = False
            continue
        if not before and (last is None or frame.seconds - last > cooldown_s):
            yield frame, found
        before, last = True, frame.seconds


def _class_seen(rule, frames, start):
    def holds(frame):
        seen = [s for s in frame.seen if s.class_name in rule.classes and s.confidence >= rule.min_confidence]
        if seen:
            best = max(seen, key=lambda s: (s.confidence, -s.index))
            return f"{best.class_name} seen ({best.confidence:.2f})", best
        return None
    return holds


def _crowd(rule, frames, start):
    def holds(frame):
        seen = [s for s in frame.seen if s.class_name in rule.classes and s.confidence >= rule.min_confidence]
        if len(seen) >= rule.at_least:
            return f"{len(seen)} × {'/'.join(sorted({s.class_name for s in seen}))} in one frame", None
        return None
    return holds


def _dark(rule, frames, start):
    def holds(frame):
        dark = frame.status == "skipped_dark" if rule.max_brightness is None else (
            frame.brightness is not None and frame.brightness < rule.max_brightness)
        return (f"dark frame (brightness {frame.brightness:.1f})" if frame.brightness is not None
                else "dark frame", None) if dark else None
    return holds


def _frozen(rule, frames, start):
    # Identical frames in a row; a run that begins with the first frame read, before the hour, may have
    # begun earlier still (its length is unknown): it fired then, or is left alone.
    runs: dict[str, int] = {}
    previous, unknown = None, bool(frames) and frames[0].seconds < start
    for frame in frames:
        same = previous is not None and frame.sha256 is not None and frame.sha256 == previous.sha256
        runs[frame.frame_id] = runs[previous.frame_id] + 1 if same else 1
        unknown = unknown and same if previous is not None else unknown
        if unknown:
            runs[frame.frame_id] = 0
        previous = frame

    def holds(frame):
        n = runs[frame.frame_id]
        return frozen_detail(n) if n >= rule.frames else None
    return holds


def _silences(rule, source: str, frames: list[EventFrame], latest: float | None) -> Iterable[Event]:
    limit = rule.minutes * 60
    for before, after in zip(frames, [*frames[1:], None], strict=True):
        until = after.seconds if after is not None else latest
        if until is not None and until - before.seconds >= limit:
            yield silence_event(rule, source, before, after)


def silence_event(rule, source: str, before: EventFrame, after: EventFrame | None) -> Event:
    """The alert of a silence after `before` (`after`: the source's next frame, if one came)."""
    ids = (before.frame_id,) + ((after.frame_id,) if after is not None else ())
    return Event(rule.name, source, f"{rule.name}|{source}|silent|{before.frame_id}",
                 before.seconds + rule.minutes * 60, before.frame_id, ids,
                 f"no frame for {rule.minutes:g} min after this one")


def _counted(frames: list[EventFrame]) -> list[counting.CountedFrame]:
    return [counting.CountedFrame(f.frame_id, f.seconds, f.width, f.height, [
        s for s in f.seen if s.track_id is not None]) for f in frames if f.status == "detected"]


def _wanted(rule, class_name: str) -> bool:
    return rule.classes is None or class_name in rule.classes


def _tracked(frame: EventFrame, track_id: int) -> Detection | None:
    return next((s for s in frame.seen if s.track_id == track_id), None)


def _subject(seen: Detection | None) -> tuple:
    return (seen.track_id, seen.index, seen.class_name) if seen is not None else (None, None, None)
