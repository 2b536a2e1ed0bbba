"""A day at a glance (`/`), the earlier pipelines' charts (`/charts`) and the operations figures
(`/operations`)."""

from __future__ import annotations

from starlette.routing import Route

from imgpipeline.web import queries, render
from imgpipeline.web.responses import day_of, guarded, page, warehouse_of


@guarded
def day_page(request, con):
    day = day_of(request, con)
    return page("day.html", days=queries.days(con),
                **render.day_context(con, day, warehouse_of(request).zones_sha256()))


@guarded
def charts_page(request, con):
    day = day_of(request, con)
    return page("charts.html", day=day, days=queries.days(con), charts=render.charts_context(con, day))


@guarded
def operations_page(request, con):
    day = day_of(request, con)
    return page("operations.html", day=day, days=queries.days(con), ops=render.operations_context(con, day))


routes = [
    Route("/", day_page),
    Route("/charts", charts_page),
    Route("/operations", operations_page),
]
