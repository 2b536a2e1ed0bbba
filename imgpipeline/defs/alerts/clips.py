"""Each alert's clip: the frames of its source from CLIP_BEFORE_S before it fired to CLIP_AFTER_S after,
drawn with their detections (the alert's track framed in white), encoded as WebM beside its annotated
frame (`<frame>.alert-<number>.webm`: retention keeps and deletes it with the alert's evidence).

Made once the window's last frames are in: its source sent a frame past the window, or the window ended
CLIP_SETTLE_S ago (the source stopped: the clip holds what came). A clip is made again only when a frame
of its window landed after it was written (a backlog, a replay, a late range), so each comes to hold
every frame its window has; a source that sent one frame in the window (a photo) keeps the snapshot
alone."""

from __future__ import annotations

import math
import time
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from imgpipeline.defs.alerts.rows import DRAWN, FRAME_COLUMNS
from imgpipeline.ingest.messages import clip_key
from imgpipeline.resources.storage import BadObject, Storage
from imgpipeline.vision import drawing, events
from imgpipeline.vision.clips import encode_webm
from imgpipeline.vision.quality import UndecodableImage, decode_image

CLIP_BEFORE_S = 5.0
CLIP_AFTER_S = 5.0
# A window that ended this long ago with no frame past it: its source stopped, the clip is made.
CLIP_SETTLE_S = 60.0
# A window holding more frames (a burst, a forged capture time) is sampled evenly down to these.
MAX_CLIP_FRAMES = 300
MAX_FRAME_PIXELS = 40_000_000  # a frame declaring more is left out of a clip undecoded


def make_clips(store: Storage, fired: list[events.Event], evidence: dict,
               frames: dict[tuple[str, str], dict], per_source: dict[str, list[events.EventFrame]],
               max_bytes: int, now: float | None = None) -> dict[str, str]:
    """Clip key per alert key, for each alert that has one now (made now, or before from every frame its
    window has); `frames` are the `frames` rows by (source, frame id), `per_source` the frames as the rules
    took them (with their detections and tracks)."""
    now = time.time() if now is None else now
    made = {}
    for event in fired:
        annotated = evidence.get(event.key, (None, None))[0]
        if annotated is None:
            continue  # no readable alert frame: no clip either
        seen = per_source.get(event.source_id, [])
        window = [f for f in seen if f.status in DRAWN
                  and event.seconds - CLIP_BEFORE_S <= f.seconds <= event.seconds + CLIP_AFTER_S]
        if len(window) < 2:
            continue  # a photo: its snapshot alone, and no look at the store
        key = clip_key(annotated)
        landed = [row["processed_at"].timestamp() for f in window
                  if (row := frames.get((event.source_id, f.frame_id))) and row["processed_at"]]
        written = store.written(key).get(key)
        if written is not None and written >= max(landed, default=0.0):
            made[event.key] = key  # made with every frame its window has landed
            continue
        past = any(f.seconds > event.seconds + CLIP_AFTER_S for f in seen)
        if not (past or now >= event.seconds + CLIP_AFTER_S + CLIP_SETTLE_S):
            continue
        window.sort(key=lambda f: f.seconds)
        window = window[::math.ceil(len(window) / MAX_CLIP_FRAMES)]
        try:
            data, count = encode_webm(drawn_frames(store, event, window, frames, max_bytes))
        except ValueError:  # none of the window's frames could be read, or the encoder refused them
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
    mine = frames.filter(pc.is_in(frames["source_id"], pa.array(sorted(windows), pa.string())))
    return {(row["source_id"], row["frame_id"]): row
            for row in mine.select([*FRAME_COLUMNS, "processed_at"]).to_pylist()
            if any(start <= row["captured_at"].timestamp() <= end
                   for start, end in windows[row["source_id"]])}


def drawn_frames(store: Storage, event: events.Event, window: list[events.EventFrame],
                 frames: dict[tuple[str, str], dict], max_bytes: int):
    """The window's frames that can be read, each drawn with its detections and the alert's track framed,
    one at a time."""
    for frame in window:
        row = frames.get((event.source_id, frame.frame_id))
        if row is None or not row["uri"]:
            continue
        try:
            image = decode_image(store.get(store.key_for(row["uri"]), max_bytes=max_bytes), MAX_FRAME_PIXELS)
        except (BadObject, UndecodableImage):
            continue
        drawn = drawing.draw_detections(image, frame.seen)
        for seen in frame.seen:
            if event.track_id is not None and seen.track_id == event.track_id:
                drawing.highlight(drawn, seen.box)
        yield frame.seconds, drawn
