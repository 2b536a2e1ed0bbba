"""What else happens as the fast lane lands a range, before the range is accounted for.

The streaming domain imports no later domain, and no later domain imports streaming. One that acts on
frames as they land (the alerts domain raises live alerts) registers a listener here when its module is
loaded, as the code location loads every domain; the fast lane tells the listeners of each range. A
listener that fails is logged and the range goes on: what it would have done, the hourly assets do from
the landing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dagster as dg

from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.resources.storage import Storage


@dataclass(frozen=True)
class LandedRange:
    """A range of a partition just landed: where, and its records (read back from the run's spools). The
    run's `context` holds its resources: a listener's settings are the run's, never read apart."""

    context: dg.OpExecutionContext
    kafka: object
    store: Storage
    topic: str
    partition: int
    start: int
    end: int
    generation: int
    records: Callable[[], Iterator[LandingRecord]]
    max_frame_bytes: int


Listener = Callable[[LandedRange], None]
_LISTENERS: list[Listener] = []


def listen(listener: Listener) -> Listener:
    """Call `listener` with every range the fast lane lands; one of a kind (a module loaded again
    registers its listener again: it replaces the one before)."""
    _LISTENERS[:] = [known for known in _LISTENERS if type(known) is not type(listener)] + [listener]
    return listener


def tell(landed: LandedRange) -> None:
    for listener in _LISTENERS:
        try:
            listener(landed)
        except Exception as exc:  # noqa: BLE001 (the range is landed: nothing it did is lost)
            landed.context.log.warning(
                f"{landed.topic}-{landed.partition} offsets {landed.start}..{landed.end - 1}: "
                f"{type(listener).__name__} failed ({type(exc).__name__}: {exc}); the hourly "
                "assets make up for it")


def finish(context: dg.OpExecutionContext, at_once: bool = False) -> None:
    """At the end of a run that told the listeners of its ranges: each that works beside the ranges (the
    live alerts' clips) finishes that work (`finish(log, wait_s)`), at once when the run was told to stop;
    one that fails is logged."""
    for listener in _LISTENERS:
        if (ending := getattr(listener, "finish", None)) is not None:
            try:
                ending(context.log, **({"wait_s": 0.0} if at_once else {}))
            except Exception as exc:  # noqa: BLE001 (what it left, the hourly assets make)
                context.log.warning(f"{type(listener).__name__} did not finish ({type(exc).__name__}: {exc})")
