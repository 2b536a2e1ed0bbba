"""Each camera as the lanes last landed it, for the viewer's live wall (`/live`, web/routes/live.py): its
latest frame of the last two event hours with its objects, and the track ids the live alerts gave them
(only sources a track rule watches are tracked live: defs/alerts/live.py).

Nothing here is kept in storage: the frames come from the landing (the records reader's `Landing`, which
reads a file once, when it is new or written again) and the ids from the live alerts' saved watches, so a
viewer started again shows the same wall.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from imgpipeline import is_camera
from imgpipeline.defs.alerts.watches import latest_key, saved_sources
from imgpipeline.defs.records.reader import Landing
from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.ingest.messages import BadInput, iso_utc, parse_time
from imgpipeline.resources.storage import Storage

SHOWN_S = 2 * 3600.0  # a camera with no frame captured in this long leaves the wall
LABELS_WAIT_S = 30.0  # how long a tracked camera's latest frame is looked for among the saved watches


@dataclass(frozen=True)
class CameraNow:
    """A camera's latest frame: its image, its objects (class, confidence, box [x, y, w, h], track id or
    None) and whether the live alerts track it (then `labelled` once its ids were found)."""

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
    """The camera a landed record shows, if it is a processed frame of a camera with an image."""
    if not (record.processed and record.uri and is_camera(record.source_id)):
        return None
    try:
        captured = parse_time(record.captured_at)
        objects = tuple((str(d["class_name"]), float(d["confidence"]), tuple(int(v) for v in d["box"][:4]),
                         None) for d in record.detections or ())
    except (BadInput, KeyError, TypeError, ValueError):
        return None  # a record another writer damaged: the camera's next frame shows
    return CameraNow(record.source_id, record.frame_id, captured, record.uri, objects,
                     (str(record.topic), int(record.partition or 0)))


class CamerasNow:
    """The wall's one view of the landing: `look` reads what landed since it last looked."""

    def __init__(self, store: Storage):
        self.store = store
        self.landing = Landing(store, keep=False)
        self.cameras: dict[str, CameraNow] = {}
        self.unlabelled: dict[str, float] = {}  # cameras whose frame's ids are looked for, until when

    def look(self, now: datetime | None = None) -> dict[str, CameraNow]:
        """The cameras whose latest frame (or its track ids) changed since the last look."""
        now = now or datetime.now(UTC)
        hour = now.replace(minute=0, second=0, microsecond=0)
        changed: dict[str, CameraNow] = {}
        for record in self.landing.look([hour - timedelta(hours=1), hour]):
            camera = camera_of(record)
            if camera is None:
                continue
            known = changed.get(camera.source_id) or self.cameras.get(camera.source_id)
            if known is None or (camera.captured_at, camera.frame_id) > (known.captured_at, known.frame_id):
                changed[camera.source_id] = camera
        self.cameras.update(changed)
        self.unlabelled.update({source: time.monotonic() + LABELS_WAIT_S for source in changed})
        for source, camera in list(self.cameras.items()):
            if (now - camera.captured_at).total_seconds() > SHOWN_S:
                del self.cameras[source]
                changed.pop(source, None)
        changed.update(self.labelled())
        return changed

    def labelled(self) -> dict[str, CameraNow]:
        """The cameras whose latest frame's track ids turned up in the live alerts' saved watches (saved
        just after the range landed, so looked for again for a while)."""
        self.unlabelled = {s: until for s, until in self.unlabelled.items()
                           if until > time.monotonic() and s in self.cameras}
        waiting = [self.cameras[s] for s in self.unlabelled]
        found = {}
        for place in sorted({c.place for c in waiting}):
            tracked = self.tracked(*place)
            for camera in (c for c in waiting if c.place == place):
                ids = tracked.get(camera.source_id, {}).get(camera.frame_id)
                if ids is not None:
                    found[camera.source_id] = replace(camera, labelled=True, objects=tuple(
                        (c, p, b, ids.get(i)) for i, (c, p, b, _) in enumerate(camera.objects)))
        self.cameras.update(found)
        for source in found:
            del self.unlabelled[source]
        return found

    def tracked(self, topic: str, partition: int) -> dict[str, dict[str, dict[int, int]]]:
        """Per source and frame of the partition's saved watch (its latest generation): each detection's
        track id by its place in the frame."""
        found = {}
        for source, tracks in saved_sources(self.store, latest_key(self.store, topic, partition)).items():
            try:
                found[source] = {str(frame[0]): {int(s[0]): int(s[4]) for s in frame[4] if s[4] is not None}
                                 for frame in tracks["tail"]}
            except (IndexError, KeyError, TypeError, ValueError):
                continue  # damaged: looked for again at the next look
        return found
