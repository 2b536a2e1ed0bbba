"""The viewer as a Starlette app: pages drawn on the server that work without script, over the
warehouse the launcher opens (`imgpipeline serve`, cli/serve.py)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from imgpipeline.web.access import WarehouseAccess
from imgpipeline.web.guard import Access, Guard
from imgpipeline.web.responses import not_found
from imgpipeline.web.routes import alerts, day, frames, laboratory, live, reports


def create_app(warehouse: WarehouseAccess, access: Access | None = None) -> Starlette:
    """The app over one warehouse; its pages find it, and the thumbnails drawn from it, in app.state.
    Every request passes `access` first (web/guard.py); by default that of a server on 127.0.0.1 with no
    login."""
    access = access or Access.listening_on("127.0.0.1")
    app = Starlette(exception_handlers={404: not_found}, middleware=[Middleware(Guard, access=access)],
                    routes=[*day.routes, *alerts.routes, *frames.routes, *reports.routes,
                            *laboratory.routes, *live.routes])
    app.state.warehouse = warehouse
    app.state.thumbnails = frames.Thumbnails(warehouse)
    app.state.wall = live.Wall(warehouse)
    return app
