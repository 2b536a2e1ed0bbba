"""Retired days: a mark retention writes before it deletes a day's landing files."""

from __future__ import annotations

from datetime import date

from imgpipeline.resources.storage import Storage

RETIRED = "landing/retired"


def retired_key(day: date) -> str:
    """`landing/retired/<date>.json`: written by retention before it deletes a day's landing files. From
    then on the day's tables are kept as built: a late frame of the day lands out of range, and nothing
    rebuilds them from what is left."""
    return f"{RETIRED}/{day.isoformat()}.json"


def is_retired(store: Storage, day: date) -> bool:
    """True once retention retired the day's landing."""
    return store.exists(retired_key(day))
