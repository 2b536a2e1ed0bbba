"""Frame rules evaluated as frames come fire what the hourly evaluation fires, with the same keys: the
evaluator fed ranges as they come (and saved and restored between them, as the live lane does) and made
afresh for each hour (as the hourly asset does), against the rules' reference (reference_rules.py) over
the same frames."""

from __future__ import annotations

import random

import pytest

from imgpipeline.ingest.messages import stand_in_source
from imgpipeline.vision import events
from imgpipeline.vision.alert_rules import parse
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.evaluator import EARLIEST, HOUR, Evaluator, evaluate, hour_of
from imgpipeline.vision.rules import FRAME_KINDS, Step
from imgpipeline_tests.test_vision import reference_rules

RULES = parse(b"""
rules:
  - {name: dog, kind: class, classes: [dog], min_confidence: 0.6, cooldown_s: 30}
  - {name: cars, kind: count, classes: [car], at_least: 2, cooldown_s: 0}
  - {name: dark, kind: dark}
  - {name: frozen, kind: frozen, frames: 3}
  - {name: silent, kind: silent, minutes: 10}
  - {name: silent-long, kind: silent, minutes: 30}
  - {name: dog-at-b, kind: class, classes: [dog], sources: [b], cooldown_s: 0}
""")
START = 1_795_000_000.0 - 1_795_000_000.0 % HOUR + 1234.5  # a little after an hour's start


def camera(rng: random.Random, source: str, count: int) -> list[events.EventFrame]:
    """A camera's frames over hours: gaps now and then (some longer than a silence), and spells (a dog
    about, cars queueing, dark, frozen) that come and go, many lasting across the turn of an hour."""
    frames, seconds, sha = [], START + rng.uniform(0, 5), None
    spell = {"dog": False, "dark": False, "frozen": False}
    cars = 0
    for n in range(count):
        seconds += rng.choice([1.0, 2.0, 5.0, 40.0, 90.0, 700.0, 9000.0]) if rng.random() < 0.3 else 1.0
        spell = {k: (not on) if rng.random() < 0.04 else on for k, on in spell.items()}
        cars = max(0, cars + rng.choice([-1, 0, 0, 0, 1])) if rng.random() < 0.2 else cars
        status = "skipped_dark" if spell["dark"] or rng.random() < 0.02 else "detected"
        sha = sha if spell["frozen"] or rng.random() < 0.1 else f"{source}-{n}"
        seen = [Detection(index=0, class_name="dog", confidence=rng.uniform(0.5, 1.0), box=(0, 0, 10, 10))
                ] if spell["dog"] else []
        seen += [Detection(index=len(seen) + i, class_name="car", confidence=rng.uniform(0.4, 1.0),
                           box=(0, 0, 10, 10)) for i in range(cars)]
        frames.append(events.EventFrame(f"{source}-{n:05d}", seconds, status, 80.0, sha, 640, 480,
                                        seen if status == "detected" else []))
    return frames


def steps(frames: list[events.EventFrame]) -> list[Step]:
    """Frames as the evaluator takes them, no tracking (the frame rules look at none)."""
    return [Step(f) for f in frames]


def hourly(frames: dict[str, list[events.EventFrame]],
           evaluated=reference_rules.evaluate) -> dict[str, events.Event]:
    """Every alert as the hourly asset finds it: each hour with the hour before and after it (by the
    rules' reference, or by `evaluated`)."""
    found = {}
    moments = [f.seconds for fs in frames.values() for f in fs]
    hour = hour_of(min(moments))
    while hour <= max(moments):
        near = {s: [f for f in fs if hour - HOUR <= f.seconds < hour + 2 * HOUR] for s, fs in frames.items()}
        near = {s: fs for s, fs in near.items() if fs}  # as the tables give them: sources that sent
        found |= {e.key: e for e in evaluated(RULES, near, None, hour, hour + HOUR)}
        hour += HOUR
    return found


def stream(frames: dict[str, list[events.EventFrame]], rng: random.Random, watch: Evaluator | None = None,
           restart_at: int | None = None):
    """The frames in ranges of a few at a time, in capture order, as a run's ranges feed them."""
    merged = sorted(((f.seconds, s, f) for s, fs in frames.items() for f in fs), key=lambda t: t[:2])
    watch = watch or Evaluator(RULES)
    live, position = {}, 0
    while position < len(merged):
        chunk = merged[position:position + rng.randint(1, 7)]
        position += len(chunk)
        for source in sorted({s for _, s, _ in chunk}):
            live |= {e.key: e for e in watch.feed(source, [Step(f) for _, s, f in chunk if s == source])}
        live |= {e.key: e for e in watch.time_passed(max(t for t, _, _ in chunk))}
        if restart_at is not None and position >= restart_at:
            watch, restart_at = Evaluator.from_json(RULES, watch.to_json()), None  # saved, a new run goes on
    return live


@pytest.mark.parametrize("seed", range(12))
def test_frames_fed_as_they_come_fire_the_hourly_alerts(seed):
    rng = random.Random(seed)
    frames = {s: camera(rng, s, 900) for s in ("a", "b")}
    truth = hourly(frames)
    assert hourly(frames, evaluate) == truth  # the hourly evaluation, as the reference defines it
    live = stream(frames, rng, restart_at=rng.randint(10, 1500))
    kinds = {r.name: r.kind for r in RULES.rules}
    assert {k for k, e in truth.items() if kinds[e.rule] in FRAME_KINDS} == {
        k for k, e in live.items() if kinds[e.rule] in FRAME_KINDS}
    assert set(live) <= set(truth)  # a silence too: never one the hour would not raise
    assert len({e.rule for e in live.values()}) == len(RULES.rules)  # every kind of rule was exercised
    assert all((e.frame_id, e.seconds, e.detail) == (truth[k].frame_id, truth[k].seconds, truth[k].detail)
               for k, e in live.items())


def test_a_watch_that_lost_its_state_fires_only_what_the_hour_would_and_catches_up_two_hours_on():
    rng = random.Random(99)
    frames = {s: camera(rng, s, 1500) for s in ("a", "b")}
    truth = hourly(frames)
    later = {s: [f for f in fs if f.seconds >= START + 1800] for s, fs in frames.items()}
    resumed_at = min(f.seconds for fs in later.values() for f in fs)
    live = stream(later, rng, watch=Evaluator(RULES, seen_since=resumed_at))
    assert live and set(live) <= set(truth)
    caught_up = hour_of(resumed_at) + 2 * HOUR  # hours whose history it saw whole
    kinds = {r.name: r.kind for r in RULES.rules}
    def settled(found):
        return {k for k, e in found.items() if e.seconds >= caught_up and kinds[e.rule] in FRAME_KINDS}

    assert settled(truth) == settled(live)


def test_frames_fed_twice_or_late_fire_nothing_more_and_other_rules_start_afresh():
    rng = random.Random(5)
    frames = {"a": camera(rng, "a", 300)}
    watch = Evaluator(RULES)
    first = watch.feed("a", steps(frames["a"][:200]))
    assert first
    assert watch.feed("a", steps(frames["a"][:200])) == []  # a range detected again
    assert watch.feed("a", steps(frames["a"][150:180])) == []  # frames older than the latest
    saved = watch.to_json()
    assert Evaluator.from_json(RULES, saved).to_json() == saved
    assert Evaluator.from_json(parse(b"rules: [{name: dog, kind: class, classes: [dog]}]"), saved) is None
    assert Evaluator(parse(b"rules: []")).idle
    assert not Evaluator(parse(b"rules: [{name: z, kind: zone_enter, zone: road}]")).idle  # one evaluator
    assert EARLIEST < 0


def test_each_silent_rule_raises_its_own_silence():
    watch = Evaluator(RULES)
    quiet = [events.EventFrame("a-1", START, "detected")]
    assert watch.feed("a", steps(quiet)) == []
    later = watch.feed("b", [Step(events.EventFrame("b-1", START + 2000, "detected"))])
    assert later == [] and {e.key for e in watch.time_passed(START + 2000)} == {
        "silent|a|silent|a-1", "silent-long|a|silent|a-1"}
    assert watch.time_passed(START + 2100) == []  # raised once


def test_records_of_messages_that_named_no_source_fire_nothing_live_or_hourly():
    garbage = [events.EventFrame(f"frames-0-{n}", START + 60 * n, "error") for n in (1, 2)]
    camera = [events.EventFrame("a-1", START, "detected"), events.EventFrame("a-2", START + 2000, "detected")]
    frames = {"a": camera, stand_in_source(b"\xff\xfe"): garbage}
    live = stream(frames, random.Random(0))
    assert live.keys() == hourly(frames).keys()
    assert {e.source_id for e in live.values()} == {"a"}  # its silences, none of the stand-in's
