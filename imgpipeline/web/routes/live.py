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
import json
import time
from datetime import UTC, datetime, timedelta
from importlib.resources import files

from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from imgpipeline.ingest.messages import FRAME_ID
from imgpipeline.resources.storage import BadObject
from imgpipeline.vision import drawing
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.quality import UndecodableImage, decode_image, encode_jpeg
from imgpipeline.web import queries
from imgpipeline.web.responses import HEADERS, NotFound, message, page, today, warehouse_of

LOOK_EVERY_S = 0.5
MAX_WATCHERS = 16  # browsers watching the wall at once; more are told to come back later
HEARTBEAT_S = 15.0  # a comment sent when nothing changed, so a browser gone is found out
RECENT_ALERTS = 8
LIVE_HEADERS = {**HEADERS, "Content-Security-Policy": HEADERS["Content-Security-Policy"]
                + "; script-src 'self'; connect-src 'self'", "Cache-Control": "no-store"}
SCRIPT = files("imgpipeline.web").joinpath("live.js").read_bytes()


class Wall:
    """The cameras as the viewer last looked, with the change (a counter) each was last seen at."""

    def __init__(self, warehouse):
        self.warehouse = warehouse
        self.cameras: dict[str, dict] = {}
        self.changed_at: dict[str, int] = {}
        self.version = 0
        self.looked = -LOOK_EVERY_S
        self.watchers = 0
        self.images: dict[str, tuple[tuple, bytes]] = {}  # source → (its frame and labels, the JPEG)
        self._looking = asyncio.Lock()
        self._changed = asyncio.Event()  # set at a change, then made anew
        self._task: asyncio.Task | None = None

    async def fresh(self) -> None:
        """Look at the storage unless the last look is recent (one look for every browser)."""
        async with self._looking:
            if time.monotonic() - self.looked < LOOK_EVERY_S:
                return
            changed, shown = await asyncio.to_thread(self.warehouse.cameras_now)
            self.looked = time.monotonic()
        gone = set(self.cameras) - set(shown)
        if changed or gone:
            self.version += 1
            for source in gone:
                self.cameras.pop(source, None)
                self.images.pop(source, None)
                self.changed_at.pop(source, None)
            for source, camera in changed.items():
                self.cameras[source], self.changed_at[source] = camera, self.version
            told, self._changed = self._changed, asyncio.Event()
            told.set()

    async def _look_while_watched(self) -> None:
        while self.watchers:
            try:
                await self.fresh()
            except Exception as exc:  # noqa: BLE001 (a storage away: the wall waits, the viewer goes on)
                print(f"live wall: the storage could not be read ({type(exc).__name__}: {exc})", flush=True)
                await asyncio.sleep(5 * LOOK_EVERY_S)
            await asyncio.sleep(LOOK_EVERY_S)

    def since(self, version: int, camera: str | None) -> list[dict]:
        return [self.cameras[s] for s in sorted(self.cameras)
                if self.changed_at.get(s, 0) > version and camera in (None, s)]

    async def watch(self, camera: str | None):
        """Server-sent events: every camera (or the one) now, then each change as it comes."""
        self.watchers += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._look_while_watched())
        try:
            sent = -1
            yield b"retry: 2000\n\n"
            while True:
                changes = self.since(sent, camera)
                sent = self.version
                if changes:
                    told = [{k: v for k, v in c.items() if k != "uri"} for c in changes]
                    yield f"data: {json.dumps(told)}\n\n".encode()
                if self.version == sent:
                    try:
                        await asyncio.wait_for(self._changed.wait(), HEARTBEAT_S)
                    except TimeoutError:
                        yield b": still here\n\n"
        finally:
            self.watchers -= 1

    def image(self, source: str) -> bytes:
        """The camera's latest frame with its boxes and labels, drawn once per frame (and labels)."""
        camera = self.cameras.get(source)
        if camera is None:
            raise NotFound(f"no camera {source} on the wall")
        drawn_for = (camera["frame_id"], camera["labelled"])
        held = self.images.get(source)
        if held is not None and held[0] == drawn_for:
            return held[1]
        warehouse = self.warehouse
        image = decode_image(warehouse.image(warehouse.store.key_for(camera["uri"])), warehouse.max_pixels)
        drawn = encode_jpeg(drawing.draw_detections(image, [
            Detection(box=tuple(o["box"]), class_name=o["class_name"], confidence=o["confidence"],
                      track_id=o["track_id"]) for o in camera["objects"]], label=object_label), 85)
        self.images[source] = (drawn_for, drawn)
        return drawn


def object_label(detection: Detection) -> str:
    """`car since 10:59:56`: a tracked object by when its track was confirmed (what its id holds), else
    its class and confidence."""
    if detection.track_id is None:
        return f"{detection.class_name} {detection.confidence:.2f}"
    confirmed = datetime.fromtimestamp(detection.track_id // 1000 / 1000, UTC)
    return f"{detection.class_name} since {confirmed:%H:%M:%S}"


def wall_of(request) -> Wall:
    return request.app.state.wall


def camera_param(request) -> str | None:
    camera = request.query_params.get("camera") or None
    if camera is not None and not FRAME_ID.match(camera):
        raise ValueError("camera is not a source id")
    return camera


async def live_page(request):
    try:
        camera = camera_param(request)
    except ValueError as exc:
        return message("Not understood", str(exc), 400)
    wall = wall_of(request)
    await wall.fresh()
    shown = wall.since(0, camera)
    alerts = await asyncio.to_thread(recent_alerts, request, camera) if camera else []
    response = page("live.html", day=today(), cameras=shown, camera=camera, alerts=alerts,
                    missing=camera is not None and not shown)
    response.headers.update(LIVE_HEADERS)
    return response


def recent_alerts(request, camera: str) -> list[dict]:
    """The camera's latest alerts of today and yesterday, as the alerts table has them."""
    days = [today(), today() - timedelta(days=1)]
    con = warehouse_of(request).cursor(days, ("alerts", "detections", "tracks"))
    return [a for day in days for a in queries.alerts(con, day, camera, RECENT_ALERTS)][:RECENT_ALERTS]


async def live_events(request):
    try:
        camera = camera_param(request)
    except ValueError as exc:
        return message("Not understood", str(exc), 400)
    wall = wall_of(request)
    if wall.watchers >= MAX_WATCHERS:
        return message("The wall is busy", f"The live wall is open in {MAX_WATCHERS} browsers already; "
                       "close one or come back later.", 503)
    return StreamingResponse(wall.watch(camera), media_type="text/event-stream",
                             headers={**LIVE_HEADERS, "X-Accel-Buffering": "no"})


async def live_image(request):
    source = request.path_params["source"]
    if not FRAME_ID.match(source):
        return message("Not found", "no such camera", 404)
    try:
        data = await asyncio.to_thread(wall_of(request).image, source)
    except NotFound as exc:
        return message("Not found", str(exc), 404)
    except (BadObject, UndecodableImage) as exc:
        return message("Not found", f"the image cannot be shown: {exc}", 404)
    return Response(data, media_type="image/jpeg", headers=LIVE_HEADERS)


def live_script(request):
    return Response(SCRIPT, media_type="text/javascript", headers={**HEADERS, "Cache-Control": "no-cache"})


routes = [
    Route("/live", live_page),
    Route("/live/events", live_events),
    Route("/live.js", live_script),
    Route("/live/{source}.jpg", live_image),
]
