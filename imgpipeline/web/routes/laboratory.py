"""The laboratory: a day under two models (`/compare`), with the boxes one found and the other missed
drawn, and a proposed rules file backtested over past days (`/backtest`), which raises nothing."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import date, timedelta

from starlette.responses import HTMLResponse
from starlette.routing import Route

from imgpipeline import ConfigError
from imgpipeline.resources.storage import BadObject
from imgpipeline.vision import drawing
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.quality import UndecodableImage, decode_image, encode_jpeg
from imgpipeline.web.responses import NotFound, day_of, guarded, jpeg, message, page, the_day, warehouse_of
from imgpipeline.web.routes.frames import find_frame, frame_args, frame_days

# The longest range the page backtests (the command line takes a quarter).
MAX_DAYS = 31
MAX_RULES_BYTES = 100_000
# Comparisons and backtests under way at once: each holds a day of detections' columns and keeps a CPU
# busy, so more would only slow every page; the next gets a 503 that says to try again.
HEAVY = threading.BoundedSemaphore(2)
RETRY_AFTER_S = 15


@contextmanager
def heavy_slot():
    """True while this request holds one of the slots for heavy work, False when all are taken."""
    admitted = HEAVY.acquire(blocking=False)
    try:
        yield admitted
    finally:
        if admitted:
            HEAVY.release()


def busy() -> HTMLResponse:
    response = message("Busy", "Other comparisons or backtests are under way: try again in a moment.", 503)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def chosen(request, name: str, default: str) -> str:
    """A model the query names, one of the registry's; else a 400 that lists them."""
    live, known = warehouse_of(request).models()
    value = (request.query_params.get(name) or default).strip().lower()
    if value not in known:
        raise ValueError(f"{name} {value[:40]!r} is not a model; the models are {', '.join(known)}")
    return value


@guarded(the_day, tables=("frames",))
def compare_page(request, con):
    day = day_of(request)
    live, known = warehouse_of(request).models()
    a = chosen(request, "a", live)
    b = chosen(request, "b", next((m for m in known if m != a), a))
    if a == b:
        raise ValueError("compare two different models")
    with heavy_slot() as admitted:
        if not admitted:
            return busy()
        try:
            found = warehouse_of(request).compare(day, a, b)
        except ConfigError as exc:  # a model whose manifest or files went wrong since the page was drawn
            raise ValueError(str(exc)) from None
    return page("compare.html", day=day, a=a, b=b, models=known, found=found)


def box_of(params) -> tuple[int, int, int, int]:
    """The box `?x=&y=&w=&h=` names, whole pixels within a frame's bounds."""
    try:
        box = tuple(int(params.get(k, "")) for k in ("x", "y", "w", "h"))
    except ValueError:
        raise ValueError("a box is x, y, w and h in whole pixels") from None
    if not all(0 <= v <= 100_000 for v in box) or not box[2] or not box[3]:
        raise ValueError("a box lies within the frame and has a width and a height")
    return box


@guarded(frame_days)
def box_image(request, con):
    """A frame's thumbnail with one box drawn: what one model found and the other did not."""
    day, found = find_frame(con, *frame_args(request))
    box, name = box_of(request.query_params), request.query_params.get("class", "")[:40]
    if not found["uri"]:
        raise NotFound(f"no image of {found['frame_id']}")
    warehouse = warehouse_of(request)
    try:
        image = decode_image(warehouse.image(warehouse.store.key_for(found["uri"])), warehouse.max_pixels)
    except (BadObject, UndecodableImage) as exc:
        raise NotFound(f"the image cannot be shown: {exc}") from None
    image = drawing.draw_detections(image, [Detection(box=box, class_name=name, confidence=1.0, class_id=0)])
    return jpeg(encode_jpeg(drawing.thumbnail(image, 240), 85))


async def posted_form(request, limit: int) -> dict[str, str]:
    """A urlencoded form's fields (the last of each name), its body at most `limit` bytes of UTF-8."""
    from urllib.parse import parse_qsl

    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ValueError(f"the form is over {limit:,} bytes")
    return dict(parse_qsl(body.decode("utf-8"), max_num_fields=8, errors="strict"))


async def backtest_page(request):
    """The form (GET), and the proposed rules' backtest (POST): the rules are parsed and checked as a
    rules file is, and evaluated over the days; no number is taken and nobody is notified."""
    from starlette.concurrency import run_in_threadpool

    warehouse = warehouse_of(request)
    live, known = warehouse.models()
    try:
        form = await posted_form(request, MAX_RULES_BYTES) if request.method == "POST" else {}
        day = day_of(request)
    except ValueError as exc:  # over the limit, more fields than the form has, bytes that are no UTF-8
        return message("Not understood", str(exc), 400)
    rules = form.get("rules", "")
    context = {"day": day, "models": known, "model": form.get("model") or live, "rules": rules,
               "first": form.get("first", ""), "last": form.get("last", ""), "found": None}
    if request.method == "GET":
        return page("backtest.html", **context)
    try:
        first, last = (date.fromisoformat(str(form.get(k, ""))) for k in ("first", "last"))
    except ValueError:
        return message("Not understood", "from and to are days (YYYY-MM-DD)", 400)
    if context["model"] not in known:
        return message("Not understood", f"the models are {', '.join(known)}", 400)
    if not timedelta(0) <= last - first < timedelta(days=MAX_DAYS):
        return message("Not understood", f"from must come before to, at most {MAX_DAYS} days apart", 400)
    with heavy_slot() as admitted:
        if not admitted:
            return busy()
        try:  # minutes of work at most, off the event loop: the other pages go on meanwhile
            context["found"] = await run_in_threadpool(warehouse.backtest, str(rules).encode(), first, last,
                                                       context["model"])
        except ConfigError as exc:
            return message("The rules cannot be used", str(exc), 400)
    context["day"] = first
    return page("backtest.html", **context)


routes = [
    Route("/compare", compare_page),
    Route("/compare/{day}/{source}/{frame_id}/box.jpg", box_image),
    Route("/backtest", backtest_page, methods=["GET", "POST"]),
]
