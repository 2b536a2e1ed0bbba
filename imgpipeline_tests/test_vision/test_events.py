"""Each alert rule fires on frames made for it, once, and stays quiet otherwise (vision/events)."""

from datetime import UTC, datetime, timedelta

from imgpipeline.ingest.messages import stand_in_source
from imgpipeline.vision import alert_rules, events, zones
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.evaluator import evaluate
from imgpipeline_tests.scenes import Thing, frames_of, moving, tracked

START = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
HOUR = (START.timestamp(), START.timestamp() + 3600)
ZONES = zones.parse(b"""
sources:
  cam:
    lines: [{name: door, start: [320, 0], end: [320, 480]}]
    zones: [{name: bench, polygon: [[400, 0], [600, 0], [600, 480], [400, 480]]}]
""")


def scene(things, seconds, fps=5.0, start=START, source="cam", track=True):
    frames = frames_of(things, start, seconds, fps, source)
    tf, ids = tracked(frames) if track else (None, {})
    return [events.EventFrame(fid, when.timestamp(), "detected", 120.0, f"sha-{fid}", 640, 480, [
        Detection(index=i, class_name=c, confidence=conf, box=box, track_id=ids.get((fid, i)))
        for i, (c, conf, box) in enumerate(seen)])
        for fid, when, seen in frames]


def fired(rules_yaml: str, frames, hour=HOUR):
    rules = alert_rules.parse(rules_yaml.encode())
    return evaluate(rules, {"cam": frames}, ZONES, *hour)


def test_a_person_crossing_the_door_fires_in_once_and_a_car_the_other_way_only_for_any():
    frames = scene([moving("person", 100, 540, 0, 6), moving("car", 560, 80, 1, 7, y=300)], 8)
    went_in = fired("rules: [{name: r, kind: line_cross, line: door, direction: in}]", frames)
    assert [(e.class_name, e.detail.split()[-1]) for e in went_in] == [("person", "(in)")]
    assert went_in[0].track_id is not None and went_in[0].detection_index is not None
    both = fired("rules: [{name: r, kind: line_cross, line: door}]", frames)
    assert sorted(e.class_name for e in both) == ["car", "person"]
    assert fired("rules: [{name: r, kind: line_cross, line: door, classes: [dog]}]", frames) == []


def test_entering_a_zone_fires_once_per_visit_and_dwell_only_past_its_time():
    # Into the bench zone (x ≥ 400) at about 2 s, stands at x = 500 until 30 s, then leaves.
    def box(t):
        x = 300 + 50 * min(t, 4) + (50 * (t - 30) if t > 30 else 0)
        return (round(x) - 20, 60, 40, 40)
    frames = scene([Thing("person", box)], 36)
    entered = fired("rules: [{name: r, kind: zone_enter, zone: bench}]", frames)
    assert len(entered) == 1 and "entered zone bench" in entered[0].detail
    long = fired("rules: [{name: r, kind: dwell, zone: bench, seconds: 20}]", frames)
    assert len(long) == 1
    assert 20 <= long[0].seconds - entered[0].seconds < 20.5
    assert long[0].frame_ids[0] == entered[0].frame_id
    assert fired("rules: [{name: r, kind: dwell, zone: bench, seconds: 40}]", frames) == []


def test_a_class_seen_for_a_while_is_one_alert_and_again_after_the_cooldown():
    frames = scene([moving("dog", 100, 200, 0, 5), moving("dog", 100, 200, 100, 105)], 110, track=False)
    found = fired("rules: [{name: r, kind: class, classes: [dog], cooldown_s: 60}]", frames)
    assert [round(e.seconds - START.timestamp()) for e in found] == [0, 100]
    assert len(fired("rules: [{name: r, kind: class, classes: [dog], cooldown_s: 0}]", frames)) == 2
    # A dog that flickers out for a frame is one alert; without a cooldown, two.
    flicker = scene([moving("dog", 100, 200, 0, 2), moving("dog", 100, 200, 2.5, 5)], 6, track=False)
    assert len(fired("rules: [{name: r, kind: class, classes: [dog]}]", flicker)) == 1
    assert len(fired("rules: [{name: r, kind: class, classes: [dog], cooldown_s: 0}]", flicker)) == 2
    assert fired("rules: [{name: r, kind: class, classes: [dog], min_confidence: 0.95}]", frames) == []
    assert fired("rules: [{name: r, kind: class, classes: [cat]}]", frames) == []


def test_a_crowd_fires_when_enough_are_in_one_frame():
    cars = [moving("car", 10 + 60 * i, 20 + 60 * i, 0, 3 + i, y=300) for i in range(3)]
    frames = scene(cars, 6)
    found = fired("rules: [{name: r, kind: count, classes: [car], at_least: 3}]", frames)
    assert len(found) == 1 and found[0].detail.startswith("3 × car")
    assert fired("rules: [{name: r, kind: count, classes: [car], at_least: 4}]", frames) == []


def test_dark_frozen_and_silent_cameras():
    frames = scene([], 20, fps=1.0)
    for f in frames[5:8]:
        f.status, f.brightness = "skipped_dark", 3.0
    for f in frames[10:16]:
        f.sha256 = "same"
    dark = fired("rules: [{name: r, kind: dark}]", frames)
    assert [e.frame_id for e in dark] == [frames[5].frame_id]
    assert [e.frame_id for e in fired("rules: [{name: r, kind: dark, max_brightness: 50}]", frames)] == [
        frames[5].frame_id]
    # A camera sending a frame every two minutes, dark all along: one alert, not one a frame.
    night = scene([], 3600, fps=1 / 120)
    for f in night:
        f.status = "skipped_dark"
    assert len(fired("rules: [{name: r, kind: dark}]", night)) == 1
    frozen = fired("rules: [{name: r, kind: frozen, frames: 5}]", frames)
    assert [e.frame_id for e in frozen] == [frames[14].frame_id]
    assert fired("rules: [{name: r, kind: frozen, frames: 7}]", frames) == []
    # 20 minutes of nothing, then the camera comes back: one alert, 10 minutes after its last frame.
    later = scene([], 5, fps=1.0, start=START + timedelta(minutes=30))
    silent = fired("rules: [{name: r, kind: silent, minutes: 10}]", frames + later)
    assert len(silent) == 1
    assert silent[0].seconds == frames[-1].seconds + 600
    assert silent[0].frame_ids == (frames[-1].frame_id, later[0].frame_id)
    assert len(fired("rules: [{name: r, kind: silent, minutes: 15}]", frames + later)) == 1
    assert fired("rules: [{name: r, kind: silent, minutes: 59}]", frames + later) == []


def test_records_that_name_no_camera_break_nothing_and_fire_nothing():
    """Records of messages that named no source: under the stand-in of their key, or under none in files
    landed before stand-ins were. The hour is evaluated all the same; no rule takes them for a camera."""
    frames = scene([], 20, fps=1.0) + scene([], 5, fps=1.0, start=START + timedelta(minutes=30))
    garbage = [events.EventFrame("frames-0-7", START.timestamp() + 25, "error")]
    rules = alert_rules.parse(b"rules: [{name: r, kind: silent, minutes: 10}]")
    found = evaluate(rules, {"cam": frames, None: garbage, stand_in_source(b"k" * 1000): garbage},
                            ZONES, *HOUR)
    assert [(e.rule, e.source_id) for e in found] == [("r", "cam")]


def test_a_camera_frozen_since_before_the_hour_does_not_fire_again_in_it():
    # One frame every 20 minutes, all identical, from 08:00: frozen three frames running at 08:40. The
    # hours after read from the hour before them, where the run is already under way: no alert again.
    sparse = scene([], 4 * 3600, fps=1 / 1200, start=START - timedelta(hours=2))
    for f in sparse:
        f.sha256 = "same"
    rule = "rules: [{name: r, kind: frozen, frames: 3}]"
    eight = (HOUR[0] - 7200, HOUR[0] - 3600)
    assert [e.frame_id for e in fired(rule, sparse, eight)] == [sparse[2].frame_id]
    assert fired(rule, sparse, (HOUR[0] - 3600, HOUR[0])) == []  # 09:00, reading from 08:00
    assert fired(rule, [f for f in sparse if f.seconds >= HOUR[0] - 3600]) == []  # the hour 10:00 reads
    fresh = scene([], 3600, fps=1 / 600)  # from 10:00, the hour before read and empty
    for f in fresh:
        f.sha256 = "same"
    assert [e.frame_id for e in fired(rule, fresh)] == [fresh[2].frame_id]


def test_an_hour_gets_only_its_own_alerts_and_the_same_keys_every_time():
    # One dog before 11:00 and one after; the window holds both hours, each hour gets its own.
    frames = scene([moving("dog", 100, 200, 3590, 3595), moving("dog", 100, 200, 3700, 3705)], 3720,
                   fps=1.0, track=False)
    first = fired("rules: [{name: r, kind: class, classes: [dog]}]", frames, HOUR)
    second = fired("rules: [{name: r, kind: class, classes: [dog]}]", frames, (HOUR[1], HOUR[1] + 3600))
    assert len(first) == 1 and len(second) == 1
    assert first[0].key != second[0].key
    again = fired("rules: [{name: r, kind: class, classes: [dog]}]", frames, (HOUR[1], HOUR[1] + 3600))
    assert again == second


def test_rules_watch_only_their_sources():
    frames = scene([moving("dog", 100, 200, 0, 5)], 6, track=False)
    assert fired("rules: [{name: r, kind: class, classes: [dog], sources: [other]}]", frames) == []
    assert len(fired("rules: [{name: r, kind: class, classes: [dog], sources: [cam]}]", frames)) == 1
