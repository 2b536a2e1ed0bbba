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
