"""The live wall (`/live`): every camera's latest frame drawn with its boxes and track labels, refreshed as
frames land; `/live?camera=<source>` one camera enlarged with its recent alerts.

One `Wall` per viewer looks at the storage (WarehouseAccess.cameras_now) every LOOK_EVERY_S while a browser
watches, and only then; browsers are told what changed over server-sent events (`/live/events`, read by
the page's one script, `/live.js`, same origin: the page's CSP allows that script and nothing else). A
camera's frame is drawn once per frame whoever watches (`/live/<source>.jpg`), one image per camera kept.
A browser costs a counter (the last change it was sent) and a task: what is sent is made from the wall's
state when the browser can take it, so one that stops reading holds nothing up and piles nothing up.
Without script the page reloads itself every few seconds.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from importlib.resources import files

from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from imgpipeline.ingest.messages import FRAME_ID, BadInput, parse_time
from imgpipeline.resources.storage import BadObject
from imgpipeline.vision import drawing
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.quality import UndecodableImage, decode_image, encode_jpeg
from imgpipeline.web import queries
from imgpipeline.web.responses import HEADERS, NotFound, message, page, today, warehouse_of

LOOK_EVERY_S = 0.5
MAX_WATCHERS = 16  # browsers watching the wall at once; more are told to come back later
HEARTBEAT_S = 15.0  # a comment sent when nothing changed, so a browser gone is found out
SEND_WITHIN_S = 30.0  # a browser that takes no event in this long (stopped, asleep) is let go
STREAM_FOR_S = 600.0  # a stream ends after this long; the browser opens another (its slot is freed)
RECENT_ALERTS = 8
LIVE_LOOKBACK = 64  # the latest numbers whose record says what they told, for the camera's live alerts
LIVE_HEADERS = {**HEADERS, "Content-Security-Policy": HEADERS["Content-Security-Policy"]
                + "; script-src 'self'; connect-src 'self'", "Cache-Control": "no-store"}
SCRIPT = files("imgpipeline.web").joinpath("live.js").read_bytes()


class Wall:
    """The cameras as the viewer last looked, with the change (a counter) each was last seen at."""

    def __init__(self, warehouse):
        self.warehouse = warehouse
        self.cameras: dict[str, dict] = {}
        self.changed_at: dict[str, int] = {}
        self.gone_at: dict[str, int] = {}  # cameras that left the wall, when (until they come back)
        self.version = 0
        self.looked = -LOOK_EVERY_S
        self.watchers = 0
        self.images: dict[str, tuple[tuple, bytes]] = {}  # source → (its frame and labels, the JPEG)
        self.drawing: dict[str, threading.Lock] = {}  # one drawing of a camera at a time
        self.failed = ""  # why the last look failed, while it does
        self._looking = asyncio.Lock()
        self._changed = asyncio.Event()  # set at a change, then made anew
        self._task: asyncio.Task | None = None

    async def fresh(self) -> None:
        """Look at the storage unless the last look is recent (one look for every browser); a look that
        fails leaves the wall as it was, and says why."""
        async with self._looking:
            if time.monotonic() - self.looked < LOOK_EVERY_S:
                return
            self.looked = time.monotonic()
            try:
                shown = await asyncio.to_thread(self.warehouse.cameras_now)
            except Exception as exc:  # noqa: BLE001 (a storage away: the wall waits, the viewer goes on)
                self.failed = f"the storage could not be read ({type(exc).__name__}: {str(exc)[:200]})"
                return
            self.failed = ""
            self.take(shown)

    def take(self, shown: dict[str, dict]) -> None:
        changed = {s: c for s, c in shown.items() if (s not in self.cameras or (
            self.cameras[s]["frame_id"], self.cameras[s]["labelled"]) != (c["frame_id"], c["labelled"]))}
        gone = set(self.cameras) - set(shown)
        if not (changed or gone):
            return
        self.version += 1
        for source in gone:
            del self.cameras[source], self.changed_at[source]
            self.images.pop(source, None)
            self.gone_at[source] = self.version
        for source, camera in changed.items():
            self.cameras[source], self.changed_at[source] = camera, self.version
            self.gone_at.pop(source, None)
        told, self._changed = self._changed, asyncio.Event()
        told.set()

    async def _look_while_watched(self) -> None:
        while self.watchers:
            await self.fresh()
            await asyncio.sleep(LOOK_EVERY_S)

    def since(self, version: int, camera: str | None) -> tuple[list[dict], list[str]]:
        """The cameras changed since `version` (the one, when given), and those gone since."""
        changed = [self.cameras[s] for s in sorted(self.cameras)
                   if self.changed_at[s] > version and camera in (None, s)]
        return changed, sorted(s for s, at in self.gone_at.items() if at > version and camera in (None, s))

    def watching(self) -> bool:
        """Take a browser's slot, if one is free (given back by EventStream)."""
        if self.watchers >= MAX_WATCHERS:
            return False
        self.watchers += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._look_while_watched())
        return True

    async def watch(self, camera: str | None):
        """Server-sent events: every camera (or the one) now, then each change as it comes, for
        STREAM_FOR_S."""
        ends, sent = time.monotonic() + STREAM_FOR_S, -1
        yield b"retry: 2000\n\n"
        while time.monotonic() < ends:
            changes, gone = self.since(sent, camera)
            sent = self.version
            if changes:
                told = [{k: v for k, v in c.items() if k != "uri"} for c in changes]
                yield f"data: {json.dumps(told)}\n\n".encode()
            if gone:
                yield f"event: gone\ndata: {json.dumps(gone)}\n\n".encode()
            if self.version == sent:
                try:
                    await asyncio.wait_for(self._changed.wait(), min(HEARTBEAT_S, ends - time.monotonic()))
                except TimeoutError:
                    yield b": still here\n\n"

    def image(self, source: str) -> bytes:
        """The camera's latest frame with its boxes and labels, drawn once per frame (and labels)."""
        with self.drawing.setdefault(source, threading.Lock()):
            camera = self.cameras.get(source)
            if camera is None:
                raise NotFound(f"no camera {source} on the wall")
            drawn_for = (camera["frame_id"], camera["labelled"])
            held = self.images.get(source)
            if held is not None and held[0] == drawn_for:
                return held[1]
            warehouse = self.warehouse
            image = decode_image(warehouse.image(warehouse.store.key_for(camera["uri"])),
                                 warehouse.max_pixels)
            drawn = encode_jpeg(drawing.draw_detections(image, [
                Detection(box=tuple(o["box"]), class_name=o["class_name"], confidence=o["confidence"],
                          track_id=o["track_id"]) for o in camera["objects"]], label=object_label), 85)
            if self.cameras.get(source) is camera:  # still its latest frame: kept for the next browser
                self.images[source] = (drawn_for, drawn)
            return drawn


class EventStream(StreamingResponse):
    """A browser's events: its slot given back however the stream ends, and a browser that takes no event
    within SEND_WITHIN_S let go."""

    def __init__(self, wall: Wall, camera: str | None):
        super().__init__(wall.watch(camera), media_type="text/event-stream",
                         headers={**LIVE_HEADERS, "X-Accel-Buffering": "no"})
        self.wall = wall

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* TimeoutError:
            pass  # the browser stopped taking events (raised alone or from the response's task group)
        finally:
            self.wall.watchers -= 1

    async def stream_response(self, send) -> None:
        async def within(message) -> None:
            await asyncio.wait_for(send(message), SEND_WITHIN_S)

        await super().stream_response(within)


def object_label(detection: Detection) -> str:
    """`car since 10:59:56`: a tracked object by when its track was confirmed (what its id holds), else
    its class and confidence."""
    if detection.track_id is None:
        return f"{detection.class_name} {detection.confidence:.2f}"
    confirmed = datetime.fromtimestamp(detection.track_id // 1000 / 1000, UTC)
    return f"{detection.class_name} since {confirmed:%H:%M:%S}"


def wall_of(request) -> Wall:
    return request.app.state.wall


def with_camera(handler):
    """A page of the wall or one camera (`?camera=`, a source id, else a 400 page): `handler(request,
    camera)`."""

    @functools.wraps(handler)
    async def wrapped(request):
        camera = request.query_params.get("camera") or None
        if camera is not None and not FRAME_ID.match(camera):
            return message("Not understood", "camera is not a source id", 400)
        return await handler(request, camera)
    return wrapped


@with_camera
async def live_page(request, camera: str | None):
    wall = wall_of(request)
    await wall.fresh()
    shown = wall.since(0, camera)[0]
    alerts = await asyncio.to_thread(recent_alerts, request, camera) if camera else []
    response = page("live.html", day=today(), cameras=shown, camera=camera, alerts=alerts,
                    missing=camera is not None and not shown, failed=wall.failed)
    response.headers.update(LIVE_HEADERS)
    return response


def recent_alerts(request, camera: str) -> list[dict]:
    """The camera's latest alerts: those of today and yesterday as the alerts table has them, and those
    raised live that are not there yet (their hour not built), as the ledger says Kafka was told them."""
    days = [today(), today() - timedelta(days=1)]
    warehouse = warehouse_of(request)
    con = warehouse.cursor(days, ("alerts", "detections", "tracks"))
    stored = [a for day in days for a in queries.alerts(con, day, camera, RECENT_ALERTS)][:RECENT_ALERTS]
    known = {a["number"] for a in stored}
    live = [row for told in warehouse.ledger().latest_told(LIVE_LOOKBACK)
            if (row := told_row(told, camera)) is not None and row["number"] not in known
            and row["fired_at"].date() >= days[-1]]  # the table's days: an older alert is in its table
    return sorted(stored + live, key=lambda a: (a["fired_at"], a["number"]), reverse=True)[:RECENT_ALERTS]


def told_row(told: dict, camera: str) -> dict | None:
    """An alert as Kafka was told it, as a row of the alerts list (None: another camera's, or a record
    whose fields are not what the alerts' are)."""
    fields = {name: told.get(name) for name in ("number", "rule", "severity", "detail")}
    if told.get("source_id") != camera or type(fields["number"]) is not int or not all(
            isinstance(fields[name], str) for name in ("rule", "severity", "detail")):
        return None
    try:
        fired = parse_time(told.get("fired_at"))
    except (BadInput, ValueError, TypeError):
        return None
    return {**fields, "source_id": camera, "fired_at": fired, "object": None, "live": True}


@with_camera
async def live_events(request, camera: str | None):
    wall = wall_of(request)
    if not wall.watching():
        return message("The wall is busy", f"The live wall is open in {MAX_WATCHERS} browsers already; "
                       "close one or come back later.", 503)
    return EventStream(wall, camera)


async def live_image(request):
    source = request.path_params["source"]
    if not FRAME_ID.match(source):
        return message("Not found", "no such camera", 404)
    try:
        data = await asyncio.to_thread(wall_of(request).image, source)
    except NotFound as exc:
        return message("Not found", str(exc), 404)
    except (BadObject, UndecodableImage, ValueError) as exc:
        return message("Not found", f"the image cannot be shown: {str(exc)[:200]}", 404)
    return Response(data, media_type="image/jpeg", headers=LIVE_HEADERS)


def live_script(request):
    return Response(SCRIPT, media_type="text/javascript", headers={**HEADERS, "Cache-Control": "no-cache"})


routes = [
    Route("/live", live_page),
    Route("/live/events", live_events),
    Route("/live.js", live_script),
    Route("/live/{source}.jpg", live_image),
]
