"""Alerts: a day's list (`/alerts`), one alert by its number with its deliveries, and its annotated
image, crop and clip."""

from __future__ import annotations

import re

from starlette.responses import RedirectResponse
from starlette.routing import Route

from imgpipeline.ingest.messages import FRAME_ID
from imgpipeline.resources.storage import BadObject, Storage
from imgpipeline.web import queries
from imgpipeline.web.responses import (
    NO_SUCH_PAGE,
    NotFound,
    day_of,
    guarded,
    jpeg,
    message,
    page,
    the_day,
    warehouse_of,
    webm,
)

IMAGES = ("annotated", "crop")
NUMBER = re.compile(r"[0-9]{1,12}")


@guarded(the_day)
def alerts_page(request, con):
    day = day_of(request)
    source = request.query_params.get("source") or None
    if source is not None and not FRAME_ID.match(source):
        raise ValueError("source is not a source id")
    return page("alerts.html", day=day, source=source, sources=queries.sources(con, day),
                alerts=queries.alerts(con, day, source))


def open_alert(request):
    """The form's `?number=` (`42` or `#42`) to the alert's own page."""
    number = request.query_params.get("number", "").strip().lstrip("#")
    if not NUMBER.fullmatch(number):
        return message("Not an alert number", "An alert number is a whole number, e.g. 42.", 400)
    return RedirectResponse(f"/alerts/{int(number)}", status_code=303)


def find_alert(request, con) -> dict:
    """The alert the path names; else a 404 saying why it is not there (the ledger knows)."""
    number = request.path_params["number"]
    found = queries.alert(con, number)
    if found is None:
        raise NotFound(warehouse_of(request).ledger().missing(number).capitalize() + ".")
    return found


def image_uris(store: Storage, found: dict) -> dict[str, str]:
    """Where the alert's images lie; a key that would leave the storage root is shown as refused."""
    uris = {}
    for name in IMAGES:
        if key := found[f"{name}_key"]:
            try:
                uris[name] = store.uri(key)
            except BadObject as exc:
                uris[name] = f"refused: {exc}"
    return uris


@guarded(tables=("alerts",))  # found by number, on whichever day
def alert_page(request, con):
    found = find_alert(request, con)
    warehouse = warehouse_of(request)
    if found["track_id"] is not None:  # its object's number, from the detections of the day it was confirmed
        found = queries.with_objects(
            warehouse.cursor([queries.confirmed_on(found["track_id"])], ("detections",)), [found])[0]
    else:
        found["object"] = None
    clip = queries.stored_clip(warehouse.store, found)
    uris = image_uris(warehouse.store, found) | ({"clip": warehouse.store.uri(clip)} if clip else {})
    return page("alert.html", a=found, day=found["day"], uris=uris,
                deliveries=warehouse.ledger().deliveries(found["number"]))


@guarded(tables=("alerts",))
def alert_image(request, con):
    kind = request.path_params["kind"]
    if kind not in IMAGES:
        raise NotFound(NO_SUCH_PAGE)
    key = find_alert(request, con)[f"{kind}_key"]
    if not key:
        raise NotFound("this alert has no such image")
    try:
        return jpeg(warehouse_of(request).image(key))
    except BadObject as exc:
        raise NotFound(str(exc)) from None


@guarded(tables=("alerts",))
def alert_clip(request, con):
    key = queries.stored_clip(warehouse_of(request).store, find_alert(request, con))
    if key is None:
        raise NotFound("this alert has no clip (a photo has none; a video's is made once the seconds after "
                       "it are in)")
    try:
        return webm(warehouse_of(request).image(key))
    except BadObject as exc:
        raise NotFound(str(exc)) from None


routes = [
    Route("/alerts", alerts_page),
    Route("/alerts/open", open_alert),
    Route("/alerts/{number:int}", alert_page),
    Route("/alerts/{number:int}/{kind:str}.jpg", alert_image),
    Route("/alerts/{number:int}/clip.webm", alert_clip),
]
