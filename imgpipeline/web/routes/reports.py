"""The daily report (`/reports/<day>`), served as daily_report stored it: one self-contained file."""

from __future__ import annotations

from datetime import date

from starlette.responses import HTMLResponse
from starlette.routing import Route

from imgpipeline.web.render import report_key
from imgpipeline.web.responses import HEADERS, message, warehouse_of


def report_page(request):
    try:
        day = date.fromisoformat(request.path_params["day"])
    except ValueError:
        return message("Not understood", "a report is named by its day (YYYY-MM-DD)", 400)
    store = warehouse_of(request).store
    key = report_key(day)
    if not store.exists(key):
        return message("No report", f"No daily report for {day} yet: materialize the daily_report "
                                    f"partition {day} (docs/viewer.md).", 404, day)
    return HTMLResponse(store.get(key), headers=HEADERS)


routes = [Route("/reports/{day}", report_page)]
