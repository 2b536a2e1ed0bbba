"""What the viewer is given: the warehouse as its launcher opens it (`imgpipeline serve`, cli/serve.py).

The app depends on this interface only, so the web layer needs neither the code location's definitions
nor how the DuckDB views are made.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Protocol

from imgpipeline.resources.storage import Storage


class AlertLedger(Protocol):
    """The ledger of alert numbers and notifications, as far as the viewer reads it."""

    def missing(self, number: int) -> str:
        """Why there is no alert with this number."""

    def deliveries(self, number: int) -> dict[str, dict]:
        """How each notification of the alert ended, by target."""

    def latest_told(self, count: int) -> list[dict]:
        """What the alerts of the latest `count` numbers said on Kafka, newest first."""


class WarehouseAccess(Protocol):
    """The storage and the warehouse views over it."""

    store: Storage
    max_pixels: int  # the largest image the viewer decodes

    def cursor(self, days: Iterable[date] | None = None, tables: Iterable[str] | None = None):
        """A DuckDB cursor with the warehouse views (frames, detections, alerts, …), one per request: over
        the `days` given only (None: every day), and the `tables` given only (None: all)."""

    def days(self) -> list[date]:
        """The days that have frames, newest first (from a listing of folders, not of files)."""

    def image(self, key: str) -> bytes:
        """An object's bytes, only when the key lies under the storage root and the object is no
        larger than a frame may be (else BadObject)."""

    def cameras_now(self) -> dict[str, dict]:
        """What the live wall shows, by camera: its latest frame and objects (defs/alerts/now.py's
        `CameraNow.as_dict`)."""

    def ledger(self) -> AlertLedger:
        """The alert ledger in the same storage."""

    def zones_sha256(self) -> str | None:
        """The zones file the line crossings are counted with (None: no zones)."""

    def models(self) -> tuple[str, list[str]]:
        """The live model's name and every model of the registry."""

    def compare(self, day: date, a: str, b: str) -> dict:
        """A day under two models (`imgpipeline compare --json`'s figures)."""

    def backtest(self, rules: bytes, first: date, last: date, model: str) -> dict:
        """A proposed rules file's backtest over the days (`imgpipeline alerts backtest --json`'s
        figures); a ConfigError says what is wrong with the file."""
