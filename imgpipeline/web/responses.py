"""What every page shares: the security headers, pages drawn from the templates, the errors that become
400 and 404 pages, the day a page is about and the warehouse a request reads."""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime

from starlette.responses import HTMLResponse, Response

from imgpipeline.web import render
from imgpipeline.web.access import WarehouseAccess

HEADERS = {
    # Pages use inline styles and inline SVG only; images and clips come from here (or data: in reports).
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; media-src 'self'; "
                               "style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # Other sites learn nothing; the viewer's own forms name their origin (under `no-referrer` a browser
    # posts them with `Origin: null`, which web/guard.py refuses as another origin).
    "Referrer-Policy": "same-origin",
}
NO_SUCH_PAGE = "There is no such page."


class NotFound(Exception):
    """What a request names is not there: a 404 page that says what (a ValueError is a 400 page)."""


def today() -> date:
    return datetime.now(UTC).date()


def page(template: str, status: int = 200, **context) -> HTMLResponse:
    return HTMLResponse(render.render(template, **context), status_code=status, headers=HEADERS)


def message(title: str, text: str, status: int, day: date | None = None) -> HTMLResponse:
    return page("message.html", status, title=title, text=text, day=day or today())


def not_found(request, exc) -> HTMLResponse:
    """The page of a path no route takes."""
    return message("Not found", NO_SUCH_PAGE, 404)


def jpeg(data: bytes) -> Response:
    return Response(data, media_type="image/jpeg",
                    headers={**HEADERS, "Cache-Control": "private, max-age=300"})


def webm(data: bytes) -> Response:
    return Response(data, media_type="video/webm",
                    headers={**HEADERS, "Cache-Control": "private, max-age=300"})


def warehouse_of(request) -> WarehouseAccess:
    return request.app.state.warehouse


def guarded(days_for=None, tables: tuple[str, ...] | None = None):
    """A page over a fresh warehouse cursor: `handler(request, con)`, its views over the days
    `days_for(request)` names (a day's page reads that day's files; None: every day) and over `tables` only
    when given. Input not understood (ValueError) becomes a 400 page, NotFound a 404 page, each saying why."""

    def decorate(handler):
        @functools.wraps(handler)
        def wrapped(request):
            try:
                days = days_for(request) if days_for is not None else None
                return handler(request, warehouse_of(request).cursor(days, tables))
            except ValueError as exc:
                return message("Not understood", str(exc), 400)
            except NotFound as exc:
                return message("Not found", str(exc), 404)
        return wrapped
    return decorate


def day_of(request) -> date:
    """The day in `?date=`; without one, today when the warehouse has it, else its latest day."""
    text = request.query_params.get("date")
    if text:
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"date {text[:40]!r} is not a day (YYYY-MM-DD)") from None
    known = warehouse_of(request).days()
    return today() if not known or today() in known else known[0]


def the_day(request) -> list[date]:
    """The page's day, for `guarded`: its views read that day's files only."""
    return [day_of(request)]
