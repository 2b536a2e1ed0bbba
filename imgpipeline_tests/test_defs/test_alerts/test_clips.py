"""Alerts' clips: made once the seconds after the alert are in, from every readable frame of the window at
their own times, once; none for a photo."""

from __future__ import annotations

import io
import os
from datetime import datetime

import av
import pytest

from imgpipeline.defs.alerts.clips import CLIP_AFTER_S, CLIP_BEFORE_S, CLIP_SETTLE_S, make_clips
from imgpipeline.defs.alerts.live import event_frames, frame_row
from imgpipeline.ingest.messages import annotated_key, clip_key
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


def decoded(data: bytes) -> tuple[int, float]:
    with av.open(io.BytesIO(data)) as clip:
        return sum(1 for _ in clip.decode(video=0)), clip.duration / 1e6


def test_a_clip_waits_for_the_seconds_after_its_alert_and_is_made_once(tmp_path):
    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    landed = records(store, ranges=None)  # 20 s of a camera at 5 frames/s, each frame's image stored
    rows = {(r.source_id, r.frame_id): frame_row(r) for r in landed}
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
    rows = {(r.source_id, r.frame_id): frame_row(r) for r in landed}
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


@pytest.mark.parametrize("size", [(270, 481), (1080, 1920)])
def test_a_clip_of_odd_or_large_frames_is_even_and_no_wider_than_its_bound(size):
    import numpy as np

    from imgpipeline.vision.clips import MAX_WIDTH, encode_webm

    pictures = [(i * 0.1, np.full((*size, 3), 40 * i, np.uint8)) for i in range(3)]
    pictures.append((0.35, np.zeros((size[0] // 2, size[1] // 2, 3), np.uint8)))  # another size: scaled
    data, count = encode_webm(iter(pictures))
    with av.open(io.BytesIO(data)) as clip:
        frames = list(clip.decode(video=0))
    assert count == len(frames) == 4
    width, height = frames[0].width, frames[0].height
    assert width <= MAX_WIDTH and width % 2 == 0 and height % 2 == 0
    assert {(f.width, f.height) for f in frames} == {(width, height)}
    with pytest.raises(ValueError):
        encode_webm(iter([]))
