"""Each camera as the lanes last landed it, for the viewer's live wall (`/live`, web/routes/live.py): its
latest frame captured in this event hour or the one before with its objects, and the track ids the live
alerts gave them (only sources a track rule watches are tracked live: defs/alerts/live.py).

Nothing here is kept in storage: the frames come from the landing (the records reader's `Landing`, which
reads a file once, when it is new or written again) and the ids from the live alerts' saved watches
(defs/alerts/watches.py, each read once per version), so a viewer started again shows the same wall. A
record or a saved watch that is damaged is passed over; the others go on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from imgpipeline import is_camera
from imgpipeline.defs.alerts.watches import STATE, generation_of, saved_sources, state_key
from imgpipeline.defs.records.reader import Landing
from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.ingest.messages import FRAME_ID, BadInput, iso_utc, parse_time
from imgpipeline.resources.storage import BadObject, Storage

LABELS_WAIT_S = 30.0  # how long a tracked camera's latest frame is looked for among the saved watches
MAX_LANDING_BYTES = 256 << 20  # a landing file larger than this is passed over
MAX_SIDE = 100_000  # a box coordinate past this is no box


@dataclass(frozen=True)
class CameraNow:
    """A camera's latest frame: its image, its objects (class, confidence, box [x, y, w, h], track id or
    None) and whether the live alerts' track ids were found for it."""

    source_id: str
    frame_id: str
    captured_at: datetime
    uri: str
    objects: tuple[tuple[str, float, tuple[int, int, int, int], int | None], ...]
    place: tuple[str, int]  # (topic, partition) it was landed from
    labelled: bool = False

    def as_dict(self) -> dict:
        """The camera as the wall shows it (web/routes/live.py)."""
        counts: dict[str, int] = {}
        for class_name, *_ in self.objects:
            counts[class_name] = counts.get(class_name, 0) + 1
        return {"source_id": self.source_id, "frame_id": self.frame_id, "uri": self.uri,
                "captured_at": iso_utc(self.captured_at), "time": self.captured_at.strftime("%H:%M:%S"),
                "labelled": self.labelled,
                "summary": ", ".join(f"{n} {c}" for c, n in sorted(counts.items())) or "nothing detected",
                "objects": [{"class_name": c, "confidence": round(p, 3), "box": list(b), "track_id": t}
                            for c, p, b, t in self.objects]}


def camera_of(record: LandingRecord) -> CameraNow | None:
    """The camera a landed record shows, if it is a processed frame of a camera with an image and all its
    fields are what the contract says (a record another writer damaged is passed over)."""
    try:
        if not (record.processed and isinstance(record.uri, str) and is_camera(record.source_id)
                and FRAME_ID.match(record.source_id) and isinstance(record.frame_id, str)
                and FRAME_ID.match(record.frame_id) and isinstance(record.topic, str)
                and FRAME_ID.match(record.topic)):
            return None
        objects = tuple(_object(d) for d in record.detections or ())
        return CameraNow(record.source_id, record.frame_id, parse_time(record.captured_at), record.uri,
                         objects, (record.topic, int(record.partition or 0)))
    except (BadInput, KeyError, TypeError, ValueError, OverflowError, AttributeError):
        return None


def _object(d: dict) -> tuple[str, float, tuple[int, int, int, int], None]:
    confidence, box = float(d["confidence"]), tuple(int(v) for v in d["box"])
    if len(box) != 4 or not math.isfinite(confidence) or any(abs(v) > MAX_SIDE for v in box):
        raise ValueError("not a detection")
    return str(d["class_name"])[:100], confidence, box, None


class CamerasNow:
    """The wall's one view of the landing: `look` reads what landed since it last looked."""

    def __init__(self, store: Storage):
        self.store = store
        self.landing = Landing(store, keep=False, max_bytes=MAX_LANDING_BYTES)
        self.cameras: dict[str, CameraNow] = {}
        self.unlabelled: dict[str, float] = {}  # cameras whose frame's ids are looked for, until when
        self.watches: dict[str, tuple[str, dict]] = {}  # saved watch key → (its version, its ids)

    def look(self, now: datetime | None = None) -> dict[str, CameraNow]:
        """Every camera shown now: those whose latest frame was captured in this hour or the one before."""
        now = now or datetime.now(UTC)
        since = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        changed: dict[str, CameraNow] = {}

        def fold(records: list[LandingRecord]) -> None:
            for camera in filter(None, map(camera_of, records)):
                known = changed.get(camera.source_id) or self.cameras.get(camera.source_id)
                if known is None or (camera.captured_at, camera.frame_id) > (known.captured_at,
                                                                              known.frame_id):
                    changed[camera.source_id] = camera

        self.landing.look([since, since + timedelta(hours=1)], fold)
        self.cameras.update(changed)
        self.unlabelled.update({source: time.monotonic() + LABELS_WAIT_S for source in changed})
        self.cameras = {s: c for s, c in self.cameras.items() if c.captured_at >= since}
        self.labelled()
        return dict(self.cameras)

    def labelled(self) -> None:
        """Give the cameras whose latest frame's track ids turned up in the live alerts' saved watches
        (saved just after the range landed, so looked for again for a while) those ids."""
        self.unlabelled = {s: until for s, until in self.unlabelled.items()
                           if until > time.monotonic() and s in self.cameras}
        waiting = [self.cameras[s] for s in self.unlabelled]
        for place in sorted({c.place for c in waiting}):
            tracked = self.tracked(*place)
            for camera in (c for c in waiting if c.place == place):
                ids = tracked.get(camera.source_id, {}).get(camera.frame_id)
                if ids is None:
                    continue
                self.cameras[camera.source_id] = replace(camera, labelled=True, objects=tuple(
                    (c, p, b, ids.get((i, c))) for i, (c, p, b, _) in enumerate(camera.objects)))
                del self.unlabelled[camera.source_id]

    def tracked(self, topic: str, partition: int) -> dict[str, dict[str, dict[tuple[int, str], int]]]:
        """Per source and frame of the partition's saved watch (its latest generation): each detection's
        track id by its place in the frame and its class. A saved watch is read once per version."""
        try:
            versions = self.store.versions(f"{STATE}/{topic}/")
        except (BadObject, OSError):
            return {}  # the storage away: looked for again at the next look
        generations = {key: g for key in versions
                       if (g := generation_of(key)) is not None and key == state_key(topic, partition, g)}
        if not generations:
            return {}
        key = max(generations, key=generations.get)
        held = self.watches.get(key)
        if held is None or held[0] != versions[key]:
            found = {}
            for source, tracks in saved_sources(self.store, key).items():
                try:
                    found[source] = {str(frame[0]): {(int(s[0]), str(s[1])): int(s[4]) for s in frame[4]
                                                     if s[4] is not None} for frame in tracks["tail"]}
                except (IndexError, KeyError, TypeError, ValueError, OverflowError):
                    continue  # damaged: its cameras go without ids
            held = self.watches[key] = versions[key], found
        return held[1]
