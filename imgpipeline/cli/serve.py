"""`imgpipeline serve`: the viewer (imgpipeline/web/) over the warehouse where it lies (DuckDB over the
configured storage; no second database), under uvicorn.

This launcher opens the warehouse for the app: the DuckDB views and the alert ledger come from the code
location's modules, which the web layer does not import.
"""

from __future__ import annotations

import sys
import threading
import time

from imgpipeline import ConfigError
from imgpipeline.defs.alerts.ledger import Ledger
from imgpipeline.defs.tables.views import connect, known_days
from imgpipeline.web.app import create_app

MAX_PROPOSED_RULES = 50  # rules the viewer's backtest page evaluates at once


class Warehouse:
    """The storage and DuckDB connections with the warehouse views: one per set of days (and tables) asked
    for, over those days' files only, each made again after `refresh_s` so new hours appear without a
    restart; each request gets its own cursor (web/access.py's WarehouseAccess). A day's page lists and
    reads that day, however many months are stored."""

    def __init__(self, storage, tracking, alerts, refresh_s: float = 10.0, kept: int = 16):
        from imgpipeline.resources import DetectorResource

        self.storage, self.store = storage, storage.open()
        self.tracking, self.alerts = tracking, alerts
        self.max_pixels = int(DetectorResource.env_value("max_pixels"))
        self.refresh_s, self.kept = refresh_s, kept
        self._lock = threading.Lock()
        self._cons: dict = {}  # (days, tables) → (connection, when made); the least recently used first
        self._days: tuple[list, float] = ([], -refresh_s)
        self._refused = ""
        self._now, self._looking = None, threading.Lock()  # the live wall's view of the landing

    def cursor(self, days=None, tables=None):
        key = (None if days is None else tuple(sorted(set(days))), None if tables is None else tuple(tables))
        with self._lock:
            con, made = self._cons.pop(key, (None, 0.0))
            if con is None or time.monotonic() - made > self.refresh_s:
                con = connect(self.storage, report=self._report, days=key[0], tables=key[1])
                made = time.monotonic()
            self._cons[key] = (con, made)
            while len(self._cons) > self.kept:
                self._cons.pop(next(iter(self._cons)))
            return con.cursor()

    def days(self) -> list:
        with self._lock:
            found, made = self._days
            if time.monotonic() - made > self.refresh_s:
                found = known_days(self.storage)
                self._days = (found, time.monotonic())
            return found

    def _report(self, refused: str) -> None:
        """Keys not read, said once (not at every refresh) until they change."""
        if refused != self._refused:
            self._refused = refused
            print(refused, file=sys.stderr, flush=True)

    def image(self, key: str) -> bytes:
        """An object's bytes, when it lies under the root and is no larger than a frame may be."""
        from imgpipeline.resources.storage import clean_key

        return self.store.get(clean_key(key), max_bytes=self.storage.max_frame_bytes)

    def ledger(self) -> Ledger:
        return Ledger(self.store)

    def cameras_now(self) -> dict[str, dict]:
        from imgpipeline.defs.alerts.now import CamerasNow

        with self._looking:
            self._now = self._now or CamerasNow(self.store)
            return {source: camera.as_dict() for source, camera in self._now.look().items()}

    def zones_sha256(self) -> str | None:
        return self.tracking.zones().sha256

    def models(self) -> tuple[str, list[str]]:
        from imgpipeline.resources import DetectorResource
        from imgpipeline.vision import models

        return DetectorResource.from_env().model, models.known()

    def compare(self, day, a: str, b: str) -> dict:
        from imgpipeline.cli.laboratory import day_hours
        from imgpipeline.defs.laboratory import history

        return history.compare_hours(self.store, day_hours(day), a, b, self.alerts.rules(),
                                     self.tracking.zones())

    def backtest(self, rules: bytes, first, last, model: str) -> dict:
        from datetime import timedelta

        from imgpipeline.cli.laboratory import day_hours
        from imgpipeline.defs.laboratory import history
        from imgpipeline.vision import alert_rules, models

        proposed, zones = alert_rules.parse(rules, "the proposed rules"), self.tracking.zones()
        if len(proposed.spec.rules) > MAX_PROPOSED_RULES:
            raise ConfigError(f"{len(proposed.spec.rules)} rules: the page backtests at most "
                              f"{MAX_PROPOSED_RULES}; the command line takes any number")
        spec = models.get(model)
        proposed.check_against(zones, spec.class_names(), str(spec.folder / spec.names))
        hours = [h for n in range((last - first).days + 1) for h in day_hours(first + timedelta(days=n))]
        return history.backtest_range(self.store, hours, proposed, zones, model)


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


def access_for(host: str):
    """Who the viewer lets in when it listens on `host` (web/guard.py): beyond loopback, only with a login
    (else a ConfigError that says which variable to set)."""
    from imgpipeline.resources import AlertsResource
    from imgpipeline.resources.viewer import ViewerAccess
    from imgpipeline.web.guard import Access, is_loopback

    settings = ViewerAccess.from_env()
    login = settings.login()
    if login is None and not is_loopback(host):
        raise ConfigError(f"--host {host} lets other machines reach the viewer, so it needs a login: set "
                          f"{settings.env('password')} in the environment (the user name is "
                          f"{settings.env_setting('user')}), or listen on 127.0.0.1")
    if login is None and (elsewhere := [n for n in settings.host_names() if not is_loopback(n)]):
        # On loopback behind a proxy that passes these names on, other machines reach it all the same.
        raise ConfigError(f"{settings.env('hosts')} names {', '.join(elsewhere)}: other machines reach the "
                          "viewer by it (through a proxy), so it needs a login: set "
                          f"{settings.env('password')} in the environment")
    return Access.listening_on(host, settings.host_names(), login, AlertsResource.from_env().links())


def serve(args) -> int:
    import uvicorn

    access = access_for(args.host)  # before the warehouse opens: a refusal costs nothing
    app = create_app(warehouse_from_env(), access)
    print(f"viewer: http://{args.host}:{args.port}/  (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
