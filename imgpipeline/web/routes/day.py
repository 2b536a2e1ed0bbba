"""A day at a glance (`/`), the earlier pipelines' charts (`/charts`) and the operations figures
(`/operations`)."""

from __future__ import annotations

from starlette.routing import Route

from imgpipeline.web import render
from imgpipeline.web.responses import day_of, guarded, page, the_day, warehouse_of


@guarded(the_day)
def day_page(request, con):
    day = day_of(request)
    return page("day.html", days=warehouse_of(request).days(),
                **render.day_context(con, day, warehouse_of(request).zones_sha256()))


@guarded(the_day)
def charts_page(request, con):
    day = day_of(request)
    return page("charts.html", day=day, days=warehouse_of(request).days(),
                charts=render.charts_context(con, day))


@guarded(the_day)
def operations_page(request, con):
    day = day_of(request)
    return page("operations.html", day=day, days=warehouse_of(request).days(),
                ops=render.operations_context(con, day))


routes = [
    Route("/", day_page),
    Route("/charts", charts_page),
    Route("/operations", operations_page),
]
