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
from dataclasses import dataclass, field

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


@dataclass
class Wanted:
    """A live alert's clip to make: its alert, where it goes, and its window's frames fed so far (with
    their track ids, as the rules took them) and their images' URIs."""

    event: events.Event
    key: str
    frames: list[events.EventFrame] = field(default_factory=list)
    uris: dict[str, str] = field(default_factory=dict)

    def takes(self, frame: events.EventFrame) -> bool:
        return (frame.status in DRAWN and self.event.seconds - CLIP_BEFORE_S <= frame.seconds
                <= self.event.seconds + CLIP_AFTER_S)


class LiveClips:
    """The clips of the alerts the fast lane raises, due as soon as their source sent a frame past the
    window (or a frame of the partition captured CLIP_SETTLE_S after it came: the source stopped; a
    backlog's clips wait for their frames, whatever the clock says), from the frames as the live rules
    took them, and drawn and encoded beside the next ranges (`make_due`, the live alerts' one encoding
    thread). Kept in memory only, the seconds before each window included: a run that ends (or is killed)
    before a clip is made leaves it to the hourly alerts run, which makes every clip an alert lacks; a clip
    made here with every frame of its window is left as it is there."""

    def __init__(self):
        self.recent: dict[str, list[tuple[events.EventFrame, str | None]]] = {}  # source → last seconds
        self.since: dict[str, float] = {}  # source → the capture time of the first frame fed here
        self.wanted: list[Wanted] = []
        self.latest = 0.0  # the latest capture time fed (of any source)

    def feed(self, source: str, frames: list[events.EventFrame], uris: dict[str, str]) -> None:
        """A source's frames of a range as the rules took them (their track ids given), with their URIs."""
        if not frames:
            return
        self.since.setdefault(source, min(f.seconds for f in frames))
        kept = self.recent.setdefault(source, [])
        kept += [(f, uris.get(f.frame_id)) for f in frames]
        latest = max(f.seconds for f, _ in kept)
        self.latest = max(self.latest, latest)
        self.recent[source] = [(f, u) for f, u in kept if f.seconds >= latest - CLIP_BEFORE_S - CLIP_AFTER_S]
        for wanted in self.wanted:
            if wanted.event.source_id == source:
                wanted.frames += [f for f in frames if wanted.takes(f)]
                wanted.uris.update({f.frame_id: uris[f.frame_id] for f in frames if f.frame_id in uris})

    def want(self, event: events.Event, annotated: str | None) -> None:
        """An alert just raised (its annotated frame at `annotated`): its clip is made when its window is,
        if this run was fed its source from before the window (else the hourly run makes it whole)."""
        if annotated is None or self.since.get(event.source_id, math.inf) > event.seconds - CLIP_BEFORE_S:
            return
        wanted = Wanted(event, clip_key(annotated))
        for frame, uri in self.recent.get(event.source_id, []):
            if wanted.takes(frame):
                wanted.frames.append(frame)
                if uri:
                    wanted.uris[frame.frame_id] = uri
        self.wanted.append(wanted)

    def due(self) -> list[tuple[Wanted, list[events.EventFrame]]]:
        """The clips whose windows are whole, taken out of those wanted, each with the frames to draw (a
        window of one frame, a photo, keeps the snapshot alone): `make_due` makes them, on any thread."""
        now = self.latest
        due, waiting = [], []
        for wanted in self.wanted:
            end = wanted.event.seconds + CLIP_AFTER_S
            latest = max((f.seconds for f, _ in self.recent.get(wanted.event.source_id, [])), default=0.0)
            if latest <= end and now < end + CLIP_SETTLE_S:
                waiting.append(wanted)
                continue
            window = sorted({f.frame_id: f for f in wanted.frames}.values(), key=lambda f: f.seconds)
            window = window[::math.ceil(len(window) / MAX_CLIP_FRAMES)] if window else []
            if len(window) >= 2:
                due.append((wanted, window))
        self.wanted = waiting
        stale = now - CLIP_BEFORE_S - CLIP_AFTER_S - CLIP_SETTLE_S  # sources that stopped are let go
        self.recent = {s: kept for s, kept in self.recent.items() if kept and kept[-1][0].seconds >= stale}
        return due


def make_due(store: Storage, due: list[tuple[Wanted, list[events.EventFrame]]],
             max_bytes: int) -> tuple[list[str], list[str]]:
    """Draw and encode the clips `LiveClips.due` gave (they hold nothing it goes on changing): the keys of
    those made, and why each that failed did (the hourly run makes those; the next is tried all the same).
    A clip the hourly run stored meanwhile stays as it is."""
    made, failed, begun = [], [], time.time()
    for wanted, window in due:
        rows = {(wanted.event.source_id, f): {"uri": u} for f, u in wanted.uris.items()}
        try:
            data, count = encode_webm(drawn_frames(store, wanted.event, window, rows, max_bytes))
            if count < 2 or store.written(wanted.key).get(wanted.key, 0.0) > begun:
                continue
            store.put(wanted.key, data)
        except ValueError:  # none of the window's frames could be read: the hourly run tries again
            continue
        except Exception as exc:  # noqa: BLE001 (the store away: this clip is the hourly run's)
            failed.append(f"{wanted.key}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        made.append(wanted.key)
    return made, failed
