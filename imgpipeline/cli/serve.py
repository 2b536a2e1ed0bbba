"""`imgpipeline serve`: the viewer, a small web app over the warehouse where it lies (DuckDB over the
configured storage; no second database).

Pages are drawn on the server and work without script. Images are read only through the storage
resource: a key must lie under the storage root, a frame's image is found by its recorded URI (which
must lie there too), sizes are bounded, and nothing else on the machine is reachable.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from urllib.parse import urlencode

from imgpipeline.ingest.messages import FRAME_ID

CLOCK = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]\Z")
HEADERS = {
    # Pages use inline styles and inline SVG only; images come from here (or data: in reports).
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Warehouse:
    """The storage and a DuckDB connection with the warehouse views, refreshed every `refresh_s` so new
    hours appear without a restart; each request gets its own cursor."""

    def __init__(self, storage, tracking, alerts, refresh_s: float = 10.0):
        from imgpipeline.resources import DetectorResource

        self.storage, self.store = storage, storage.open()
        self.tracking, self.alerts = tracking, alerts
        self.max_pixels = int(DetectorResource.env_value("max_pixels"))
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._con, self._made = None, 0.0
        self._refused = ""

    def cursor(self):
        from imgpipeline.defs.tables.views import connect

        with self._lock:
            if self._con is None or time.monotonic() - self._made > self.refresh_s:
                self._con, self._made = connect(self.storage, report=self._report), time.monotonic()
            return self._con.cursor()

    def _report(self, refused: str) -> None:
        """Keys not read, said once (not at every refresh) until they change."""
        if refused != self._refused:
            self._refused = refused
            print(refused, file=sys.stderr, flush=True)

    def image(self, key: str) -> bytes:
        """An object's bytes, when it lies under the root and is no larger than a frame may be."""
        from imgpipeline.resources.storage import clean_key

        return self.store.get(clean_key(key), max_bytes=self.storage.max_frame_bytes)


def create_app(warehouse: Warehouse):
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, RedirectResponse, Response
    from starlette.routing import Route

    from imgpipeline.defs.alerts.ledger import Ledger
    from imgpipeline.resources.storage import BadObject
    from imgpipeline.vision import drawing
    from imgpipeline.vision.quality import UndecodableImage, decode_image, encode_jpeg
    from imgpipeline.web import queries, render
    from imgpipeline.web.render import report_key

    class NotFound(Exception):
        pass

    def page(template: str, status: int = 200, **context) -> HTMLResponse:
        return HTMLResponse(render.render(template, **context), status_code=status, headers=HEADERS)

    def message(title: str, text: str, status: int, day=None) -> HTMLResponse:
        return page("message.html", status, title=title, text=text, day=day or _today())

    def _today() -> date:
        return datetime.now(UTC).date()

    def day_of(request, con) -> date:
        text = request.query_params.get("date")
        if text:
            try:
                return date.fromisoformat(text)
            except ValueError:
                raise ValueError(f"date {text[:40]!r} is not a day (YYYY-MM-DD)") from None
        known = queries.days(con)
        return _today() if not known or _today() in known else known[0]

    def guarded(handler):
        def wrapped(request):
            try:
                return handler(request, warehouse.cursor())
            except ValueError as exc:
                return message("Not understood", str(exc), 400)
            except NotFound as exc:
                return message("Not found", str(exc), 404)
        wrapped.__name__ = handler.__name__
        return wrapped

    def jpeg(data: bytes) -> Response:
        return Response(data, media_type="image/jpeg",
                        headers={**HEADERS, "Cache-Control": "private, max-age=300"})

    @guarded
    def day_page(request, con):
        day = day_of(request, con)
        return page("day.html", days=queries.days(con),
                    **render.day_context(con, day, warehouse.tracking.zones().sha256))

    @guarded
    def alerts_page(request, con):
        day = day_of(request, con)
        source = request.query_params.get("source") or None
        if source is not None and not FRAME_ID.match(source):
            raise ValueError("source is not a source id")
        return page("alerts.html", day=day, source=source, sources=queries.sources(con, day),
                    alerts=queries.alerts(con, day, source))

    def open_alert(request):
        number = request.query_params.get("number", "").strip().lstrip("#")
        if not re.fullmatch(r"[0-9]{1,12}", number):
            return message("Not an alert number", "An alert number is a whole number, e.g. 42.", 400)
        return RedirectResponse(f"/alerts/{int(number)}", status_code=303)

    def _alert(con, request) -> dict:
        number = request.path_params["number"]
        found = queries.alert(con, number)
        if found is None:
            raise NotFound(Ledger(warehouse.store).missing(number).capitalize() + ".")
        return found

    @guarded
    def alert_page(request, con):
        found = _alert(con, request)
        uris = {name: warehouse.store.uri(found[f"{name}_key"]) for name in ("annotated", "crop")
                if found[f"{name}_key"]}
        return page("alert.html", a=found, day=found["day"], uris=uris,
                    deliveries=Ledger(warehouse.store).deliveries(found["number"]))

    @guarded
    def alert_image(request, con):
        found = _alert(con, request)
        key = found[f"{request.path_params['kind']}_key"]
        if not key:
            raise NotFound("this alert has no such image")
        try:
            return jpeg(warehouse.image(key))
        except BadObject as exc:
            raise NotFound(str(exc)) from None

    def frame_args(request) -> tuple[date, str, str]:
        params = request.path_params
        if not (FRAME_ID.match(params["source"]) and FRAME_ID.match(params["frame_id"])):
            raise NotFound("no such frame")
        return date.fromisoformat(params["day"]), params["source"], params["frame_id"]

    @guarded
    def frames_page(request, con):
        day = day_of(request, con)
        q = request.query_params
        query = {"source": q.get("source") or None, "start": q.get("start") or None,
                 "end": q.get("end") or None, "class_name": q.get("class") or None,
                 "name": (q.get("name") or "")[:100] or None}
        for name in ("start", "end"):
            if query[name] and not CLOCK.match(query[name]):
                raise ValueError(f"{name} {query[name][:20]!r} is not a time of day (HH:MM)")
        page_number = int(q.get("page", "0")) if q.get("page", "0").isdigit() else 0
        found = queries.search_frames(con, day, page=min(page_number, 10_000), **query)

        def query_for(n: int) -> str:
            kept = {k: v for k, v in q.items() if k != "page" and v}
            return urlencode({**kept, "page": n})

        return page("frames.html", day=day, q=query, sources=queries.sources(con, day),
                    classes=queries.classes(con, day), frames=found[:queries.PAGE_SIZE],
                    more=len(found) > queries.PAGE_SIZE, page=page_number, query_for=query_for)

    def find_frame(con, day: date, source: str, frame_id: str) -> tuple[date, dict]:
        """The frame on that day, else the day before (an alert's frames may begin before midnight)."""
        for when in (day, day - timedelta(days=1)):
            found = queries.frame(con, when, source, frame_id)
            if found is not None:
                return when, found
        raise NotFound(f"no frame {frame_id} of {source} on {day}")

    @guarded
    def frame_page(request, con):
        day, found = find_frame(con, *frame_args(request))
        return page("frame.html", day=day, f=found,
                    detections=queries.frame_detections(con, day, found["source_id"], found["frame_id"]))

    def drawn(con, day: date, found: dict, kind: str) -> bytes:
        if not found["uri"]:
            raise NotFound(f"no image of {found['frame_id']}")
        key = warehouse.store.key_for(found["uri"])  # a URI outside the root is refused here
        image = decode_image(warehouse.image(key), warehouse.max_pixels)
        if kind in ("annotated", "thumb"):
            rows = queries.frame_detections(con, day, found["source_id"], found["frame_id"])
            image = drawing.draw_detections(image, [drawing.Labelled(
                (d["x"], d["y"], d["w"], d["h"]), d["class_name"], d["confidence"], d["class_id"])
                for d in rows])
        if kind == "thumb":
            image = drawing.thumbnail(image, 240)
        return encode_jpeg(image, 85)

    @lru_cache(maxsize=4096)
    def thumbnail(day: date, source: str, frame_id: str, processed_at) -> bytes:
        """Only thumbnails are kept (about 10 KB each), keyed by when the frame was processed: a frame
        processed again shows its new boxes."""
        con = warehouse.cursor()
        return drawn(con, day, queries.frame(con, day, source, frame_id), "thumb")

    @guarded
    def frame_image(request, con):
        day, found = find_frame(con, *frame_args(request))
        kind = request.path_params["kind"]
        if kind not in ("thumb", "annotated", "image"):
            raise NotFound("no such image")
        try:
            if kind == "thumb":
                return jpeg(thumbnail(day, found["source_id"], found["frame_id"], found["processed_at"]))
            return jpeg(drawn(con, day, found, kind))
        except (BadObject, UndecodableImage) as exc:
            raise NotFound(f"the image cannot be shown: {exc}") from None

    @guarded
    def charts_page(request, con):
        day = day_of(request, con)
        return page("charts.html", day=day, days=queries.days(con), charts=render.charts_context(con, day))

    @guarded
    def operations_page(request, con):
        day = day_of(request, con)
        return page("operations.html", day=day, days=queries.days(con),
                    ops=render.operations_context(con, day))

    def report_page(request):
        try:
            day = date.fromisoformat(request.path_params["day"])
        except ValueError:
            return message("Not understood", "a report is named by its day (YYYY-MM-DD)", 400)
        key = report_key(day)
        if not warehouse.store.exists(key):
            return message("No report", f"No daily report for {day} yet: materialize the daily_report "
                                        f"partition {day} (docs/viewer.md).", 404, day)
        return HTMLResponse(warehouse.store.get(key), headers=HEADERS)

    def not_found(request, exc):
        return message("Not found", "There is no such page.", 404)

    return Starlette(exception_handlers={404: not_found}, routes=[
        Route("/", day_page),
        Route("/alerts", alerts_page),
        Route("/alerts/open", open_alert),
        Route("/alerts/{number:int}", alert_page),
        Route("/alerts/{number:int}/{kind:str}.jpg", _only(alert_image, "kind", ("annotated", "crop"))),
        Route("/frames", frames_page),
        Route("/frames/{day}/{source}/{frame_id}", frame_page),
        Route("/frames/{day}/{source}/{frame_id}/{kind}.jpg", frame_image),
        Route("/charts", charts_page),
        Route("/operations", operations_page),
        Route("/reports/{day}", report_page),
    ])


def _only(handler, name: str, allowed: tuple[str, ...]):
    from starlette.exceptions import HTTPException

    def wrapped(request):
        if request.path_params[name] not in allowed:
            raise HTTPException(404)
        return handler(request)
    return wrapped


class Running:
    """The app under uvicorn in a thread on a free loopback port (benchmarks and tests)."""

    def __init__(self, app):
        import socket

        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the viewer did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def warehouse_from_env() -> Warehouse:
    from imgpipeline.resources import AlertsResource, StorageResource, TrackingResource

    return Warehouse(StorageResource.from_env(), TrackingResource.from_env(), AlertsResource.from_env())


def serve(args) -> int:
    import uvicorn

    app = create_app(warehouse_from_env())
    print(f"viewer: http://{args.host}:{args.port}/  (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
