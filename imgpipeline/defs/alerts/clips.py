"""Each alert's clip: the frames of its source from CLIP_BEFORE_S before it fired to CLIP_AFTER_S after,
drawn with their detections (the alert's track framed in white), encoded once as WebM beside its
annotated frame (`<frame>.alert-<number>.webm`: retention keeps and deletes it with the alert's
evidence). Made once the window's last frames are in (the source sent a frame past it, or it has been
over CLIP_SETTLE_S); a source that sent one frame in the window (a photo) keeps the snapshot alone."""

from __future__ import annotations

import time
from collections import defaultdict

import pyarrow as pa

from imgpipeline.defs.alerts.rows import DRAWN, FRAME_COLUMNS
from imgpipeline.ingest.messages import clip_key
from imgpipeline.resources.storage import BadObject, Storage
from imgpipeline.vision import drawing, events
from imgpipeline.vision.clips import encode_webm
from imgpipeline.vision.quality import UndecodableImage, decode_image

CLIP_BEFORE_S = 5.0
CLIP_AFTER_S = 5.0
# A source that sent nothing past the window this long after it: its clip is made with what came.
CLIP_SETTLE_S = 60.0


def make_clips(store: Storage, fired: list[events.Event], evidence: dict,
               frames: dict[tuple[str, str], dict], per_source: dict[str, list[events.EventFrame]],
               max_bytes: int, now: float | None = None) -> dict[str, str]:
    """Clip key per alert key, for each alert that has one now (made now, or before); `frames` are the
    `frames` rows by (source, frame id), `per_source` the frames as the rules took them (with their
    detections and tracks)."""
    now = time.time() if now is None else now
    made = {}
    for event in fired:
        annotated = evidence.get(event.key, (None, None))[0]
        if annotated is None:
            continue  # no readable alert frame: no clip either
        key = clip_key(annotated)
        if store.exists(key):
            made[event.key] = key
            continue
        start, end = event.seconds - CLIP_BEFORE_S, event.seconds + CLIP_AFTER_S
        seen = per_source.get(event.source_id, [])
        window = sorted((f for f in seen if start <= f.seconds <= end and f.status in DRAWN),
                        key=lambda f: f.seconds)
        complete = any(f.seconds > end for f in seen) or now >= end + CLIP_SETTLE_S
        if len(window) < 2 or not complete:
            continue
        pictures = drawn_frames(store, event, window, frames, max_bytes)
        try:
            data, count = encode_webm(pictures)
        except ValueError:  # none of the window's frames could be read
            continue
        if count >= 2:
            store.put(key, data)
            made[event.key] = key
    return made


def window_rows(frames: pa.Table, fired: list[events.Event]) -> dict[tuple[str, str], dict]:
    """The `frames` rows in the alerts' clip windows, by (source, frame id)."""
    windows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for event in fired:
        windows[event.source_id].append((event.seconds - CLIP_BEFORE_S, event.seconds + CLIP_AFTER_S))
    return {(row["source_id"], row["frame_id"]): row for row in frames.select(FRAME_COLUMNS).to_pylist()
            if any(start <= row["captured_at"].timestamp() <= end
                   for start, end in windows.get(row["source_id"], ()))}


def drawn_frames(store: Storage, event: events.Event, window: list[events.EventFrame],
                 frames: dict[tuple[str, str], dict], max_bytes: int):
    """The window's frames that can be read, each drawn with its detections and the alert's track framed,
    one at a time."""
    for frame in window:
        row = frames.get((event.source_id, frame.frame_id))
        if row is None or not row["uri"]:
            continue
        try:
            image = decode_image(store.get(store.key_for(row["uri"]), max_bytes=max_bytes))
        except (BadObject, UndecodableImage):
            continue
        drawn = drawing.draw_detections(image, frame.seen)
        for seen in frame.seen:
            if event.track_id is not None and seen.track_id == event.track_id:
                drawing.highlight(drawn, seen.box)
        yield frame.seconds, drawn
