"""Alerts' clips: made once the seconds after the alert are in, from every readable frame of the window at
their own times, once; none for a photo."""

from __future__ import annotations

import io
import os
import time
from dataclasses import replace
from datetime import UTC, datetime

import av
import pytest

from imgpipeline.defs.alerts import clips as clip_module
from imgpipeline.defs.alerts.clips import CLIP_AFTER_S, CLIP_BEFORE_S, CLIP_SETTLE_S, make_clips
from imgpipeline.defs.alerts.live import event_frames, frame_row
from imgpipeline.ingest.messages import annotated_key, clip_key, parse_time
from imgpipeline.resources import StorageResource
from imgpipeline.vision import events
from imgpipeline_tests.test_defs.test_alerts.scene import records


def alert_at(record, number: int = 1) -> tuple[events.Event, dict]:
    """An alert fired at a record's frame, and its evidence as the alerts run gives it."""
    captured = datetime.fromisoformat(record.captured_at.replace("Z", "+00:00"))
    event = events.Event(rule="r", source_id=record.source_id, key=f"k{number}", seconds=captured.timestamp(),
                         frame_id=record.frame_id, frame_ids=(record.frame_id,), detail="")
    return event, {event.key: (annotated_key(record.source_id, captured, record.frame_id, f"alert-{number}"),
                               None)}


def rows_of(landed) -> dict[tuple[str, str], dict]:
    """The `frames` rows of landed records, as the alerts run reads them (when each was processed too)."""
    return {(r.source_id, r.frame_id): {**frame_row(r), "processed_at": parse_time(r.processed_at)}
            for r in landed}


def decoded(data: bytes) -> tuple[int, float]:
    with av.open(io.BytesIO(data)) as clip:
        return sum(1 for _ in clip.decode(video=0)), clip.duration / 1e6


def test_a_clip_waits_for_the_seconds_after_its_alert_and_is_made_once(tmp_path):
    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    landed = records(store, ranges=None)  # 20 s of a camera at 5 frames/s, each frame's image stored
    rows = rows_of(landed)
    middle = landed[len(landed) // 2]
    event, evidence = alert_at(middle)
    fired = event.seconds

    def seconds(r):
        return datetime.fromisoformat(r.captured_at.replace("Z", "+00:00")).timestamp()

    window = [r for r in landed if fired - CLIP_BEFORE_S <= seconds(r) <= fired + CLIP_AFTER_S]
    key = clip_key(evidence[event.key][0])
    # Only the frames up to 2 s after the alert have landed, and the wall clock is just past them.
    early = [r for r in landed if seconds(r) <= fired + 2]
    assert make_clips(store, [event], evidence, rows, event_frames(early), 1 << 24, now=fired + 3) == {}
    assert not store.exists(key)
    # A frame past the window landed: the clip holds every frame of the window, at its own time.
    made = make_clips(store, [event], evidence, rows, event_frames(landed), 1 << 24, now=fired + 3)
    assert made == {event.key: key}
    count, duration = decoded(store.get(key))
    assert count == len(window) and len(window) > 2
    span = seconds(window[-1]) - seconds(window[0])
    assert span <= duration <= span + 0.5, (span, duration)
    # Made once: the next run finds it and leaves it.
    path = tmp_path / "store" / key
    written = path.stat().st_mtime_ns
    os.utime(path, ns=(written - 10**9, written - 10**9))
    assert make_clips(store, [event], evidence, rows, event_frames(landed), 1 << 24) == {event.key: key}
    assert path.stat().st_mtime_ns == written - 10**9


def test_a_source_that_stopped_gets_the_clip_of_what_came_and_a_photo_none(tmp_path):
    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    landed = records(store, ranges=None)
    rows = rows_of(landed)
    last = landed[-1]
    event, evidence = alert_at(last)
    # Nothing came after the alert: no clip until the window has been over CLIP_SETTLE_S.
    assert make_clips(store, [event], evidence, rows, event_frames(landed), 1 << 24,
                      now=event.seconds + CLIP_AFTER_S + 1) == {}
    # Then the frames before it, two of whose images cannot be read (gone, garbage), are the clip.
    before = [r for r in landed if event.seconds - CLIP_BEFORE_S <= event_frames([r])["cam"][0].seconds]
    store.delete(store.key_for(before[0].uri))
    store.put(store.key_for(before[1].uri), b"not a jpeg")
    made = make_clips(store, [event], evidence, rows, event_frames(landed), 1 << 24,
                      now=event.seconds + CLIP_AFTER_S + CLIP_SETTLE_S)
    assert decoded(store.get(made[event.key]))[0] == len(before) - 2
    # A photo: the one frame of its source in the window keeps the snapshot alone.
    photo = landed[:1]
    event, evidence = alert_at(photo[0], number=2)
    assert make_clips(store, [event], evidence, rows, event_frames(photo), 1 << 24,
                      now=event.seconds + 3600) == {}
    # An alert whose frame could not be read has no annotated frame, and no clip.
    assert make_clips(store, [event], {}, rows, event_frames(landed), 1 << 24, now=event.seconds + 3600) == {}


@pytest.mark.parametrize("size", [(270, 481), (1080, 1920), (20_000, 100)])
def test_a_clip_of_odd_large_or_tall_frames_is_even_and_within_its_bound(size):
    import numpy as np

    from imgpipeline.vision.clips import MAX_SIDE, encode_webm

    pictures = [(i * 0.1, np.full((*size, 3), 40 * i, np.uint8)) for i in range(3)]
    pictures.append((0.35, np.zeros((size[0] // 2, size[1] // 2, 3), np.uint8)))  # another size: scaled
    data, count = encode_webm(iter(pictures))
    with av.open(io.BytesIO(data)) as clip:
        frames = list(clip.decode(video=0))
    assert count == len(frames) == 4
    width, height = frames[0].width, frames[0].height
    assert max(width, height) <= MAX_SIDE and width % 2 == 0 and height % 2 == 0
    assert {(f.width, f.height) for f in frames} == {(width, height)}
    with pytest.raises(ValueError):
        encode_webm(iter([]))


def test_frames_of_a_window_that_land_after_its_clip_make_it_again(tmp_path):
    """A window whose frames came late (a backlog, a replay, a late range): it ended long ago, so its clip
    is made with what came; the frames that land after it make it again, with every frame, and then it
    stays."""
    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    landed = records(store, ranges=None)
    middle = landed[len(landed) // 2]
    event, evidence = alert_at(middle)
    key = clip_key(evidence[event.key][0])

    def processed(rs, at: float):
        return [replace(r, processed_at=datetime.fromtimestamp(at, UTC).isoformat()) for r in rs]

    early = processed([r for r in landed if parse_time(r.captured_at).timestamp() <= event.seconds + 1],
                      time.time() - CLIP_SETTLE_S - 5)
    def in_window(rs):
        return [r for r in rs if abs(parse_time(r.captured_at).timestamp() - event.seconds) <= CLIP_AFTER_S]

    made = make_clips(store, [event], evidence, rows_of(early), event_frames(early), 1 << 24)
    assert made == {event.key: key}
    assert decoded(store.get(key))[0] == len(in_window(early)) < len(in_window(landed))
    late = early + processed(landed[len(early):], time.time())
    made = make_clips(store, [event], evidence, rows_of(late), event_frames(late), 1 << 24)
    assert made == {event.key: key}
    window = in_window(landed)
    assert decoded(store.get(key))[0] == len(window)
    written = (tmp_path / "store" / key).stat().st_mtime_ns
    make_clips(store, [event], evidence, rows_of(late), event_frames(late), 1 << 24)
    assert (tmp_path / "store" / key).stat().st_mtime_ns == written


def test_a_burst_of_frames_in_a_window_is_sampled_down(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_module, "MAX_CLIP_FRAMES", 10)
    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    landed = records(store, ranges=None)  # 51 frames in the window of the middle one
    event, evidence = alert_at(landed[len(landed) // 2])
    made = make_clips(store, [event], evidence, rows_of(landed), event_frames(landed), 1 << 24)
    assert 2 <= decoded(store.get(made[event.key]))[0] <= 10


LANE_RULES = """
rules:
  - {name: person-through-door, kind: line_cross, line: door, classes: [person]}
  - {name: car-seen, kind: class, classes: [car]}
"""


def lane_scene(tmp_path, kafka):
    """The scene's camera, 20 s at 5 frames/s, not landed yet, with rules the live alerts raise on it: a car
    parked from its first frame, a person through the door in its middle."""
    import dagster as dg

    from imgpipeline.resources import AlertsResource, TrackingResource
    from imgpipeline_tests.test_defs.test_alerts.scene import ZONES

    (tmp_path / "zones.yaml").write_text(ZONES)
    (tmp_path / "alerts.yaml").write_text(LANE_RULES)
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    resources = {"storage": storage, "kafka": kafka,
                 "tracking": TrackingResource(zones_file=str(tmp_path / "zones.yaml")),
                 "alert_rules": AlertsResource(alerts_file=str(tmp_path / "alerts.yaml"))}
    landed = records(storage.open(), ranges=None)
    for n, record in enumerate(landed):
        record.offset = n
    context = dg.build_op_context(resources={k: resources[k] for k in ("tracking", "alert_rules")})
    return storage, resources, landed, context


def lane_ranges(storage, kafka, context, lanes, landed, size: int = 10):
    """The frames landed range after range, each told to the live alerts (`lanes`: the run of each range):
    per range, its last frame's capture time and the clips stored once the clips it began were made."""
    from imgpipeline.defs.records.listeners import LandedRange
    from imgpipeline_tests.test_defs.test_tracking.test_tracking import land

    store, seen = storage.open(), []
    for n, start in enumerate(range(0, len(landed), size)):
        part = landed[start:start + size]
        land(store, part, f"frames-0-{start}-{start + len(part)}")
        lane = lanes(n)
        lane(LandedRange(context, kafka, store, kafka.frames_topic, 0, start, start + len(part), 0,
                         lambda part=part: iter(part), storage.max_frame_bytes))
        lane.finish(context.log)  # the clips it began beside the next range: made by now
        clips = sorted(k for k in store.list("annotated/") if k.endswith(".webm"))
        seen.append((parse_time(part[-1].captured_at).timestamp(), clips))
    return seen


def test_the_fast_lane_makes_an_alerts_clip_once_the_seconds_after_it_landed(tmp_path, kafka):
    """The person through the door: its clip is stored by the fast lane with the range that brings the
    first frame past its window, every frame of the window in it; the car's alert, raised on the camera's
    first frame (the seconds before it unseen by this run), is left to the hourly run, which leaves the
    fast lane's clip as it is."""
    from imgpipeline.defs.alerts.assets import alerts
    from imgpipeline.defs.alerts.live import LiveAlerts
    from imgpipeline.defs.warehouse.assets import hourly_tables
    from imgpipeline_tests.instances import fresh_instance
    from imgpipeline_tests.test_defs.test_alerts.scene import RANGE
    from imgpipeline_tests.test_defs.test_tracking.test_tracking import materialize

    storage, resources, landed, context = lane_scene(tmp_path, kafka)
    lane = LiveAlerts()
    with context:
        seen = lane_ranges(storage, kafka, context, lambda n: lane, landed)
    store = storage.open()
    [(made_at, [key])] = [(at, clips) for at, clips in seen if clips][:1]
    frame_id = key.rsplit("/", 1)[1].split(".alert-")[0]
    [alerted] = [r for r in landed if r.frame_id == frame_id]
    fired = parse_time(alerted.captured_at).timestamp()
    assert frame_id != landed[0].frame_id  # the person's, not the car's
    before = [at for at, clips in seen if not clips]
    assert made_at > fired + CLIP_AFTER_S >= max(before)
    window = [r for r in landed if abs(parse_time(r.captured_at).timestamp() - fired) <= CLIP_AFTER_S]
    count, duration = decoded(store.get(key))
    span = (parse_time(window[-1].captured_at) - parse_time(window[0].captured_at)).total_seconds()
    assert count == len(window) > 2 and span <= duration <= span + 0.5
    print(f"the fast lane's clip: {len(store.get(key))} bytes, {count} frames, {duration:.1f} s")
    written = (tmp_path / "store" / key).stat().st_mtime_ns
    with fresh_instance() as instance:
        materialize([hourly_tables, alerts], *RANGE, resources, instance)
    clips = sorted(k for k in store.list("annotated/") if k.endswith(".webm"))
    assert len(clips) == 2 and key in clips  # the car's made by the hourly run
    assert (tmp_path / "store" / key).stat().st_mtime_ns == written


def test_a_run_that_ends_before_its_clip_is_made_leaves_it_to_the_hourly_run(tmp_path, kafka):
    """Each range by a run of its own (a follow_frames run killed after each range, another taking over):
    the clip waiting in the first run's memory is lost with it, none is made by the fast lane; the
    hourly run makes it, whole."""
    from imgpipeline.defs.alerts.assets import alerts
    from imgpipeline.defs.alerts.live import LiveAlerts
    from imgpipeline.defs.warehouse.assets import hourly_tables
    from imgpipeline_tests.instances import fresh_instance
    from imgpipeline_tests.test_defs.test_alerts.scene import RANGE
    from imgpipeline_tests.test_defs.test_tracking.test_tracking import materialize

    storage, resources, landed, context = lane_scene(tmp_path, kafka)
    with context:
        seen = lane_ranges(storage, kafka, context, lambda n: LiveAlerts(), landed, size=20)
    assert all(not clips for _, clips in seen)
    with fresh_instance() as instance:
        materialize([hourly_tables, alerts], *RANGE, resources, instance)
    store = storage.open()
    clips = sorted(k for k in store.list("annotated/") if k.endswith(".webm"))
    assert len(clips) == 2 and all(decoded(store.get(k))[0] > 2 for k in clips)


def test_a_run_told_to_stop_lets_its_clips_not_begun_go_to_the_hourly_run(tmp_path, kafka):
    """The fast lane's clips wait their turn on its one encoding thread (held here by a clip that takes
    long): a run told to stop lets those not begun go at once (its log says so), stores no part of them,
    and the hourly run makes them whole."""
    import threading

    from imgpipeline.defs.alerts.assets import alerts
    from imgpipeline.defs.alerts.live import LiveAlerts
    from imgpipeline.defs.warehouse.assets import hourly_tables
    from imgpipeline_tests.instances import fresh_instance
    from imgpipeline_tests.test_defs.test_alerts.scene import RANGE
    from imgpipeline_tests.test_defs.test_tracking.test_tracking import materialize

    storage, resources, landed, context = lane_scene(tmp_path, kafka)
    lane, busy, said = LiveAlerts(), threading.Event(), []
    lane.encoded.append(lane.encoding.submit(lambda: (busy.wait(60), ([], []))[1]))
    with context:
        from imgpipeline.defs.records.listeners import LandedRange
        from imgpipeline_tests.test_defs.test_tracking.test_tracking import land

        store = storage.open()
        for start in range(0, len(landed), 10):
            part = landed[start:start + 10]
            land(store, part, f"frames-0-{start}-{start + len(part)}")
            lane(LandedRange(context, kafka, store, kafka.frames_topic, 0, start, start + len(part), 0,
                             lambda part=part: iter(part), storage.max_frame_bytes))
        waiting = len(lane.encoded)

        class Log:
            def info(self, message: str) -> None:
                said.append(message)

            warning = info

        lane.finish(Log(), wait_s=0.0)
    busy.set()
    assert waiting >= 2 and any("left to the hourly run" in m for m in said), said
    assert not [k for k in store.list("annotated/") if k.endswith(".webm")]
    with fresh_instance() as instance:
        materialize([hourly_tables, alerts], *RANGE, resources, instance)
    clips = sorted(k for k in store.list("annotated/") if k.endswith(".webm"))
    assert len(clips) == 2 and all(decoded(store.get(k))[0] > 2 for k in clips)
