"""Track rules evaluated as frames come fire what the hourly evaluation fires over the hourly build's
track ids, with the same keys (vision/live_tracks and the evaluator against vision/tracking and the rules'
reference, reference_rules.py); the hourly evaluation itself gives the reference's alerts."""

from __future__ import annotations

import random

import pytest

from imgpipeline.vision import events, zones
from imgpipeline.vision.alert_rules import parse
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.evaluator import Evaluator, confirmed_at, evaluate
from imgpipeline.vision.live_tracks import TrackWatch
from imgpipeline.vision.tracking import TrackedFrame, TrackerSettings, assign
from imgpipeline_tests.test_vision import reference_rules

HOUR = 3600.0
RULES = parse(b"""
rules:
  - {name: crossed, kind: line_cross, line: middle, classes: [car]}
  - {name: crossed-in, kind: line_cross, line: middle, direction: in}
  - {name: entered, kind: zone_enter, zone: yard, classes: [person]}
  - {name: lingered, kind: dwell, zone: yard, seconds: 20}
  - {name: dog, kind: class, classes: [dog]}
""")
CAMERA = (b"{lines: [{name: middle, start: [320, 0], end: [320, 480], min_frames: 2}], "
          b"zones: [{name: yard, polygon: [[400, 250], [640, 250], [640, 480], [400, 480]]}]}")
ZONES = zones.parse(b"sources: {a: " + CAMERA + b", b: " + CAMERA + b"}")
SETTINGS = TrackerSettings()
START = 1_795_000_000.0 - 1_795_000_000.0 % HOUR + 3000.0  # ten minutes before an hour turns


def camera(rng: random.Random, source: str, seconds: float, rate: float = 2.0) -> list[events.EventFrame]:
    """A camera's frames at a steady rate: cars driving across the middle line either way, people walking
    into the yard and staying a while, a detection missed now and then, and a minute with no frames."""
    objects = []  # (class, born, x0, y, vx, vy, life)
    t = START
    while t < START + seconds:
        t += rng.expovariate(1 / 12)
        if rng.random() < 0.6:
            x0, vx = (-60.0, rng.uniform(40, 90)) if rng.random() < 0.5 else (700.0, -rng.uniform(40, 90))
            objects.append(("car", t, x0, rng.uniform(60, 200), vx, 0.0, 760 / abs(vx)))
        else:
            objects.append(("person", t, rng.uniform(300, 380), rng.uniform(300, 400), rng.uniform(8, 20),
                            0.0, rng.uniform(15, 60)))
    gap = (START + seconds * rng.uniform(0.3, 0.7), 60.0)
    frames, n = [], 0
    while (at := START + n / rate) < START + seconds:
        n += 1
        if gap[0] <= at < gap[0] + gap[1]:
            continue
        seen = []
        for cls, born, x0, y, vx, vy, life in objects:
            if born <= at < born + life and rng.random() > 0.08:
                x = x0 + vx * (at - born) + rng.uniform(-2, 2)
                w, h = (80, 50) if cls == "car" else (30, 70)
                if -w < x < 640:
                    seen.append(Detection(index=len(seen), class_name=cls, confidence=rng.uniform(0.55, 0.95),
                                          box=(int(x), int(y + vy * (at - born)), w, h)))
        frames.append(events.EventFrame(f"{source}-{n:06d}", at, "detected", 90.0, f"{source}{n}", 640, 480,
                                        seen))
    return frames


def tracked(frame: events.EventFrame) -> TrackedFrame:
    return TrackedFrame(frame.frame_id, frame.seconds, list(frame.seen))


def hourly(frames: dict[str, list[events.EventFrame]],
           evaluated=reference_rules.evaluate) -> dict[str, events.Event]:
    """Every track alert as the hourly chain finds it: each hour tracked on from the stored end of the
    hour before (as warehouse/tracked.py `track_hour`), then evaluated with the hours around it (by the
    rules' reference, or by `evaluated`)."""
    ids: dict[tuple[str, str, int], int] = {}
    moments = [f.seconds for fs in frames.values() for f in fs]
    first = min(moments) - min(moments) % HOUR
    hour = first
    while hour <= max(moments):
        for source, fs in frames.items():
            mine = [tracked(f) for f in fs if hour <= f.seconds < hour + HOUR]
            replay = [tracked(f) for f in fs if hour - SETTINGS.replay_for(2.0) <= f.seconds < hour]
            for frame in replay:
                frame.recorded = {o.index: ids.get((source, frame.frame_id, o.index))
                                  for o in frame.observations}
            for (frame_id, index), track_id in assign(replay, mine, SETTINGS).items():
                ids[source, frame_id, index] = track_id
        hour += HOUR
    with_ids = {s: [events.EventFrame(f.frame_id, f.seconds, f.status, f.brightness, f.sha256, f.width,
                                      f.height, [x.with_track(ids.get((s, f.frame_id, x.index)))
                                                 for x in f.seen])
                    for f in fs] for s, fs in frames.items()}
    found, hour = {}, first
    while hour <= max(moments):
        near = {s: [f for f in fs if hour - HOUR <= f.seconds < hour + 2 * HOUR]
                for s, fs in with_ids.items()}
        found |= {e.key: e for e in evaluated(RULES, near, ZONES, hour, hour + HOUR) if e.rule != "dog"}
        hour += HOUR
    return found


def stream(frames, rng, watch: TrackWatch, restart_at: int | None = None) -> dict[str, events.Event]:
    """The frames in ranges of a few at a time, tracked and counted, then evaluated, as the live lane does;
    the track alerts."""
    merged = sorted(((f.seconds, s, f) for s, fs in frames.items() for f in fs), key=lambda t: t[:2])
    evaluator = Evaluator(RULES, watch.seen_since)
    live, position = {}, 0
    while position < len(merged):
        chunk = merged[position:position + rng.randint(1, 9)]
        position += len(chunk)
        for source in sorted({s for _, s, _ in chunk}):
            steps = watch.feed(source, [f for _, s, f in chunk if s == source])
            for event in evaluator.feed(source, steps):
                assert event.key not in live  # raised once
                live[event.key] = event
        if restart_at is not None and position >= restart_at:
            watch, restart_at = TrackWatch.from_json(RULES, ZONES, SETTINGS, watch.to_json()), None
            evaluator = Evaluator.from_json(RULES, evaluator.to_json())
    return {key: e for key, e in live.items() if e.rule != "dog"}


@pytest.mark.parametrize("seed", range(3))
def test_tracks_followed_as_frames_come_fire_the_hourly_alerts(seed):
    rng = random.Random(seed)
    frames = {s: camera(rng, s, 1200) for s in ("a", "b")}
    truth = hourly(frames)
    assert hourly(frames, evaluate) == truth  # the hourly evaluation, as the reference defines it
    live = stream(frames, rng, TrackWatch(RULES, ZONES, SETTINGS), restart_at=rng.randint(100, 5000))
    assert set(live) == set(truth)
    assert {e.rule for e in live.values()} == {"crossed", "crossed-in", "entered", "lingered"}
    assert any(hour_turns(e.seconds) for e in live.values()) or seed  # alerts on both sides of the hour
    assert all((e.frame_id, e.seconds, e.track_id, e.detection_index, e.detail) == (
        truth[k].frame_id, truth[k].seconds, truth[k].track_id, truth[k].detection_index, truth[k].detail)
        for k, e in live.items())


def hour_turns(seconds: float) -> bool:
    return seconds >= START - START % HOUR + HOUR


def test_a_watch_that_lost_its_state_raises_no_track_it_may_not_know_whole():
    rng = random.Random(11)
    frames = {"a": camera(rng, "a", 900)}
    truth = hourly(frames)
    later = {"a": [f for f in frames["a"] if f.seconds >= START + 300]}
    resumed = later["a"][0].seconds
    live = stream(later, rng, TrackWatch(RULES, ZONES, SETTINGS, seen_since=resumed))
    assert live and set(live) <= set(truth)
    assert all(confirmed_at(e.track_id) >= resumed + SETTINGS.replay_for(0.5) for e in live.values())
    assert len(live) >= 0.8 * len([e for e in truth.values() if e.seconds >= resumed + 60])


def test_frames_fed_twice_or_late_raise_nothing_and_changed_zones_start_afresh():
    rng = random.Random(3)
    frames = camera(rng, "a", 300)
    watch = TrackWatch(RULES, ZONES, SETTINGS)
    steps = watch.feed("a", frames[:400])
    assert any(s.crossings for s in steps) and any(s.inside for s in steps)
    assert any(s.track_id for step in steps for s in step.frame.seen)  # the frames with their ids

    def passed_on(fed, given):  # as they came: no ids, crossings or visits
        return [s.frame for s in fed] == given and not any(s.crossings or s.inside for s in fed) and all(
            s.frame is f for s, f in zip(fed, given, strict=True))

    assert passed_on(watch.feed("a", frames[:400]), frames[:400])
    assert passed_on(watch.feed("a", frames[300:350]), frames[300:350])
    assert passed_on(watch.feed("c", frames[400:]), frames[400:])  # no line or zone drawn there
    assert "c" not in watch.sources  # not tracked
    only_b = TrackWatch(parse(b"rules: [{name: x, kind: line_cross, line: middle, sources: [b]}]"), ZONES,
                        SETTINGS)
    assert passed_on(only_b.feed("a", frames[400:]), frames[400:]) and "a" not in only_b.sources
    saved = watch.to_json()
    assert TrackWatch.from_json(RULES, ZONES, SETTINGS, saved).to_json() == saved
    other = zones.parse(b"sources: {a: {lines: [{name: middle, start: [300, 0], end: [300, 480]}]}}")
    assert TrackWatch.from_json(RULES, other, SETTINGS, saved) is None
    assert TrackWatch(parse(b"rules: [{name: d, kind: class, classes: [dog]}]"), ZONES, SETTINGS).idle


def warm(tmp_path, saved: bytes, landed_at: list[float], b_at: tuple[float, ...] = ()):
    """The watches a range of "a" (and of "b" when `b_at` is given) from START gets from `load_watches` with
    `saved` as the live state in storage and frames of "a" landed at `landed_at`, of "b" at `b_at` (by
    another range, a run killed since)."""
    from datetime import UTC, datetime

    from imgpipeline.defs.alerts.live import load_watches, state_key
    from imgpipeline.defs.records.keys import landing_key
    from imgpipeline.defs.records.listeners import LandedRange
    from imgpipeline.defs.records.record import LandingRecord
    from imgpipeline.ingest.messages import iso_utc
    from imgpipeline.resources import StorageResource

    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    store.put(state_key("frames", 0), saved)
    landed = [("a", seconds) for seconds in landed_at] + [("b", seconds) for seconds in b_at]
    for n, (source, seconds) in enumerate(landed):
        at = datetime.fromtimestamp(seconds, UTC)
        record = LandingRecord(schema=1, frame_id=f"{source}-{n}", source_id=source, captured_at=iso_utc(at),
                               status="detected", sha256="x")
        store.put(landing_key(at.replace(minute=0, second=0, microsecond=0), f"frames-0-{n}-{n + 1}"),
                  record.to_json() + b"\n")
    ranged = LandedRange(None, None, store, "frames", 0, 50, 60, 0, lambda: iter(()), 1 << 20)
    frames = {source: [events.EventFrame(f"{source}-new", START, "detected")]
              for source in ("a", "b")[:2 if b_at else 1]}
    return load_watches(store, ranged, RULES, ZONES, SETTINGS, frames)


@pytest.mark.parametrize("saved", [
    b"not json", b"[]", b'{"through": "x"}', b'{"through": 50, "watch": null, "tracks": null}',
    b'{"through": 50, "watch": {"sources": 3}, "tracks": {"sources": {"a": {"tail": [[1]]}}}}',
])
def test_a_damaged_live_state_is_warmed_from_the_landing_and_fails_nothing(tmp_path, saved):
    """A state file in storage that is not what the lane wrote (damaged, of another version, hostile)
    gives new watches, warmed with the landed frames of the range's sources since the hour before: the
    range goes on and fires what the hourly run gives it."""
    watch, tracks = warm(tmp_path, saved, [START - 60])  # a frame of another range, a minute before
    assert watch.seen_since == START - START % HOUR - HOUR  # from the start of the hour before
    assert watch.sources["a"].last_frame == "a-0"  # fed what was landed
    # The tracker only the last seconds, where "a" sent nothing: it sees every frame after "a-0".
    assert tracks.seen_since == START - 60 and not tracks.sources


@pytest.mark.parametrize(("landed_at", "blind"), [
    # A camera's first frames landed by a run killed since: the tracker is fed them all and is not blind.
    ([START - 5, START - 4], False),
    ([START - 60, START - 5], False),  # the frame before them a minute back: its tracks are lost
    # A frame just before the seconds the tracker is fed: a track of it may go on unseen, under another id.
    ([START - SETTINGS.replay_for(0.5) - 1, START - 5], True),
])
def test_a_watch_warmed_after_its_run_was_killed_is_blind_only_where_it_did_not_read(tmp_path, landed_at,
                                                                                        blind):
    from imgpipeline.vision.evaluator import EARLIEST

    _, tracks = warm(tmp_path, b"lost", landed_at)
    assert tracks.sources["a"].last == (landed_at[-1], "a-1")
    assert (tracks.sources["a"].blind_until != EARLIEST) is blind


def test_a_camera_warmed_whole_is_not_blinded_by_another_cameras_frame_before(tmp_path):
    """Two cameras of one partition: "b" sent a frame just before the seconds the tracker is fed, "a" only
    within them. "b" starts blind, "a" does not."""
    from imgpipeline.vision.evaluator import EARLIEST

    _, tracks = warm(tmp_path, b"lost", [START - 5, START - 4],
                     b_at=(START - SETTINGS.replay_for(0.5) - 1, START - 3))
    assert tracks.sources["a"].blind_until == EARLIEST
    assert tracks.sources["b"].blind_until != EARLIEST
