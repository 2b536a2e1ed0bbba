"""Tracking and counting on synthetic scenes with exact expected counts (vision/tracking, vision/counting)."""

from datetime import UTC, datetime, timedelta

import pytest

from imgpipeline.vision import counting, zones
from imgpipeline.vision.tracking import TrackerSettings, assign
from imgpipeline_tests.scenes import Thing, counted, frames_of, moving, tracked

START = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
HOUR = (START.timestamp(), START.timestamp() + 3600)
# A vertical line at x = 320: walking from its start (top) to its end (bottom), left to right is `in`.
LINE = zones.parse(b"""
sources:
  cam:
    lines: [{name: door, start: [320, 0], end: [320, 480], min_frames: 2}]
    zones: [{name: bench, polygon: [[400, 0], [600, 0], [600, 480], [400, 480]]}]
""")


def hour_counts(things, seconds, fps=5.0, settings=None):
    tf, ids = tracked(frames_of(things, START, seconds, fps), settings)
    c = counting.count(counted(tf, ids), LINE, "cam", *HOUR)
    return ids, {(r["kind"], r["name"], r["class_name"]): r for r in counting.rows(c, ["door"], ["bench"])}


def test_objects_crossing_both_ways_count_once_each_way():
    ids, rows = hour_counts([moving("person", 100, 540, 0, 6), moving("car", 560, 80, 1, 7, y=300)], 8)
    assert rows["objects", None, "person"]["unique_objects"] == 1
    assert rows["objects", None, "car"]["unique_objects"] == 1
    person, car = rows["line", "door", "person"], rows["line", "door", "car"]
    assert (person["crossed_in"], person["crossed_out"], person["unique_objects"]) == (1, 0, 1)
    assert (car["crossed_in"], car["crossed_out"], car["unique_objects"]) == (0, 1, 1)
    assert len(set(ids.values())) == 2


def test_a_box_flickering_on_the_line_is_no_crossing():
    # A parked object's box jitters by 3 px: its anchor lands on alternate sides of the line each frame
    # for 10 s, never two frames running on the new side.
    flicker = Thing("person", lambda t: (300 + (3 if round(t * 5) % 2 else -3), 60, 40, 40))
    _, rows = hour_counts([flicker], 10)
    assert rows["objects", None, "person"]["unique_objects"] == 1
    line = rows["line", "door", "person"]
    assert (line["crossed_in"], line["crossed_out"], line["unique_objects"]) == (0, 0, 0)


def test_a_one_frame_detection_is_never_counted():
    blip = Thing("dog", lambda t: (100, 100, 40, 40) if abs(t - 2.0) < 1e-6 else None)
    ids, rows = hour_counts([blip, moving("person", 100, 200, 0, 5)], 6)
    assert ("objects", None, "dog") not in rows
    tf, _ = tracked(frames_of([blip], START, 6, 5.0))
    assert sum(len(f.observations) for f in tf) == 1  # it was detected, once
    assert rows["objects", None, "person"]["unique_objects"] == 1


def test_standing_in_a_zone_for_30_s_dwells_30_s():
    # Walks at 50 px/s from x = 300: into the zone (x ≥ 400) at 2 s, stands at 500 from 4 s to 30 s,
    # walks on and leaves it (x > 600) at 32 s: 30 s inside.
    def box(t):
        x = 300 + 50 * t if t < 4 else 500 if t < 30 else 500 + 50 * (t - 30)
        return (round(x) - 20, 60, 40, 40)

    fps = 5.0
    _, rows = hour_counts([Thing("person", box)], 36, fps)
    zone = rows["zone", "bench", "person"]
    assert zone["visits"] == 1 and zone["unique_objects"] == 1
    assert zone["dwell_max_s"] == pytest.approx(30.0, abs=1 / fps)
    assert zone["dwell_p50_s"] == zone["dwell_max_s"] == zone["dwell_p95_s"]


def test_a_track_over_an_hour_boundary_keeps_its_id_and_counts_once_a_day():
    walker = moving("person", 100, 540, 0, 5)  # 10:59:58 to 11:00:03, over the line at 11:00:01
    frames = frames_of([walker], START + timedelta(minutes=59, seconds=58), 5, 5.0)
    tf, _ = tracked(frames)
    boundary = (START + timedelta(hours=1)).timestamp()
    before = [f for f in tf if f.seconds < boundary]
    after = [f for f in tf if f.seconds >= boundary]
    first = assign([], before, TrackerSettings())
    for f in before:  # what the first hour stored
        f.recorded = {o.index: first.get((f.frame_id, o.index)) for o in f.observations}
    second = assign(before, after, TrackerSettings())
    ids = {**first, **second}
    frames_counted = counting.from_tracker(tf, ids, 640, 480)
    hours = [counting.count(frames_counted, LINE, "cam", t, t + 3600) for t in (boundary - 3600, boundary)]
    assert hours[0].objects["person"] and hours[1].objects["person"]  # seen in both hours
    assert hours[0].objects["person"] | hours[1].objects["person"] == set(first.values())  # one object
    assert len(set(first.values())) == 1
    assert [len(h.crossings) for h in hours] == [0, 1]  # it crossed once, after 11:00


@pytest.mark.parametrize("interval_s", [2.0, 5.0])
def test_a_slowly_sampled_source_is_tracked_and_continues_over_the_hour(interval_s):
    # A parked car sampled every 2 s or 5 s from 10:58 to 11:02: one object, whatever the rate.
    car = Thing("car", lambda t: (200, 200, 80, 40))
    frames = frames_of([car], START + timedelta(minutes=58), 240, 1 / interval_s)
    tf, _ = tracked(frames)
    boundary = (START + timedelta(hours=1)).timestamp()
    settings = TrackerSettings()
    before = [f for f in tf if f.seconds < boundary]
    first = assign([], before, settings)
    for f in before:
        f.recorded = {o.index: first.get((f.frame_id, o.index)) for o in f.observations}
    window = settings.replay_for(1 / interval_s)
    second = assign([f for f in before if f.seconds >= boundary - window],
                    [f for f in tf if f.seconds >= boundary], settings)
    assert len(first) >= len(before) - settings.minimum_frames
    assert set(first.values()) == set(second.values()) and len(set(first.values())) == 1


@pytest.mark.parametrize("fps", [2.0, 5.0, 10.0])
def test_tracks_follow_capture_time_not_frame_numbers(fps):
    # Unseen for 0.8 s (continues: lost_s is 1 s) and later for 2.5 s (a new track), at any rate.
    def box(t):
        if 3.0 < t < 3.8 or 6.0 < t < 8.5:
            return None
        return (100 + round(10 * t), 100, 40, 40)

    tf, ids = tracked(frames_of([Thing("car", box)], START, 12, fps))
    spans = {}
    for f in tf:
        for o in f.observations:
            if (f.frame_id, o.index) in ids:
                first, last = spans.get(ids[f.frame_id, o.index], (f.seconds, f.seconds))
                spans[ids[f.frame_id, o.index]] = (min(first, f.seconds), max(last, f.seconds))
    assert len(spans) == 2
    (a_first, a_last), (b_first, _) = sorted(spans.values())
    assert a_last - START.timestamp() >= 5.5  # one track over the short gap
    assert b_first - START.timestamp() >= 8.5  # a second one after the long gap


def test_tracking_again_gives_the_same_ids():
    things = [
        moving("person", 100, 540, 0, 6),
        moving("car", 560, 80, 1, 7, y=300),
        moving("person", 50, 600, 2, 9, y=400),
    ]
    frames = frames_of(things, START, 10, 5.0)
    assert tracked(frames)[1] == tracked(frames)[1]
    ids = tracked(frames)[1]
    assert len(set(ids.values())) == 3
    assert all(str(i).startswith(str(int(START.timestamp()))[:6]) for i in ids.values())
