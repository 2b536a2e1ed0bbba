"""Frames: a day's search (`/frames`), one frame with its detections, and its image as stored, with
its boxes drawn, or as a thumbnail.

An image is found by the frame's recorded URI, which must lie under the storage root, and read only
through the storage with its size bound (WarehouseAccess.image).
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from functools import lru_cache
from urllib.parse import urlencode

from starlette.routing import Route

from imgpipeline.ingest.messages import FRAME_ID
from imgpipeline.resources.storage import BadObject
from imgpipeline.vision import drawing
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.quality import UndecodableImage, decode_image, encode_jpeg
from imgpipeline.web import queries
from imgpipeline.web.access import WarehouseAccess
from imgpipeline.web.responses import NotFound, day_of, guarded, jpeg, page, the_day, warehouse_of

CLOCK = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]\Z")
IMAGES = ("thumb", "annotated", "image")


def search_query(params) -> dict:
    """The search form's fields as queries.search_frames takes them; times of day must be HH:MM."""
    query = {"source": params.get("source") or None, "start": params.get("start") or None,
             "end": params.get("end") or None, "class_name": params.get("class") or None,
             "name": (params.get("name") or "")[:100] or None}
    for name in ("start", "end"):
        if query[name] and not CLOCK.match(query[name]):
            raise ValueError(f"{name} {query[name][:20]!r} is not a time of day (HH:MM)")
    return query


@guarded(the_day)
def frames_page(request, con):
    day = day_of(request)
    q = request.query_params
    query = search_query(q)
    page_number = int(q.get("page", "0")) if q.get("page", "0").isdigit() else 0
    found = queries.search_frames(con, day, page=min(page_number, 10_000), **query)

    def query_for(n: int) -> str:
        kept = {k: v for k, v in q.items() if k != "page" and v}
        return urlencode({**kept, "page": n})

    return page("frames.html", day=day, q=query, sources=queries.sources(con, day),
                classes=queries.classes(con, day), frames=found[:queries.PAGE_SIZE],
                more=len(found) > queries.PAGE_SIZE, page=page_number, query_for=query_for)


def frame_args(request) -> tuple[date, str, str]:
    """The day, source and frame id the path names (ids of the message contract only)."""
    params = request.path_params
    if not (FRAME_ID.match(params["source"]) and FRAME_ID.match(params["frame_id"])):
        raise NotFound("no such frame")
    return date.fromisoformat(params["day"]), params["source"], params["frame_id"]


def frame_days(request) -> list[date]:
    """The days a frame's page reads: the day its path names and the day before (find_frame)."""
    day = frame_args(request)[0]
    return [day, day - timedelta(days=1)]


def find_frame(con, day: date, source: str, frame_id: str) -> tuple[date, dict]:
    """The frame on that day, else the day before (an alert's frames may begin before midnight)."""
    for when in (day, day - timedelta(days=1)):
        found = queries.frame(con, when, source, frame_id)
        if found is not None:
            return when, found
    raise NotFound(f"no frame {frame_id} of {source} on {day}")


@guarded(frame_days)
def frame_page(request, con):
    day, found = find_frame(con, *frame_args(request))
    return page("frame.html", day=day, f=found,
                detections=queries.frame_detections(con, day, found["source_id"], found["frame_id"]))


def drawn(warehouse: WarehouseAccess, con, day: date, found: dict, kind: str) -> bytes:
    """A frame's image as a JPEG: as stored (`image`), with its boxes (`annotated`) or a thumbnail."""
    if not found["uri"]:
        raise NotFound(f"no image of {found['frame_id']}")
    key = warehouse.store.key_for(found["uri"])  # a URI outside the root is refused here
    image = decode_image(warehouse.image(key), warehouse.max_pixels)
    if kind in ("annotated", "thumb"):
        rows = queries.frame_detections(con, day, found["source_id"], found["frame_id"])
        image = drawing.draw_detections(image, [Detection(
            box=(d["x"], d["y"], d["w"], d["h"]), class_name=d["class_name"], confidence=d["confidence"],
            class_id=d["class_id"]) for d in rows])
    if kind == "thumb":
        image = drawing.thumbnail(image, 240)
    return encode_jpeg(image, 85)


class Thumbnails:
    """Drawn thumbnails kept in memory (only these, about 10 KB each), keyed by when the frame was
    processed: a frame processed again shows its new boxes."""

    def __init__(self, warehouse: WarehouseAccess, size: int = 4096):
        self.warehouse = warehouse
        self.get = lru_cache(maxsize=size)(self._draw)

    def _draw(self, day: date, source: str, frame_id: str, processed_at) -> bytes:
        con = self.warehouse.cursor([day])
        return drawn(self.warehouse, con, day, queries.frame(con, day, source, frame_id), "thumb")


@guarded(frame_days)
def frame_image(request, con):
    day, found = find_frame(con, *frame_args(request))
    kind = request.path_params["kind"]
    if kind not in IMAGES:
        raise NotFound("no such image")
    try:
        if kind == "thumb":
            thumbnails: Thumbnails = request.app.state.thumbnails
            return jpeg(thumbnails.get(day, found["source_id"], found["frame_id"], found["processed_at"]))
        return jpeg(drawn(warehouse_of(request), con, day, found, kind))
    except (BadObject, UndecodableImage) as exc:
        raise NotFound(f"the image cannot be shown: {exc}") from None


routes = [
    Route("/frames", frames_page),
    Route("/frames/{day}/{source}/{frame_id}", frame_page),
    Route("/frames/{day}/{source}/{frame_id}/{kind}.jpg", frame_image),
]
