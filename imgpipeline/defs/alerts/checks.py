"""Checks of the alerts table: numbers given once, and evidence stored for every alert that has a frame."""

from __future__ import annotations

import pyarrow as pa

from imgpipeline.defs.tables import ALERTS_SCHEMA
from imgpipeline.defs.tables.checks import SCHEMA_AS_DECLARED, schema_problems
from imgpipeline.resources.storage import Storage

CHECKS = {
    "alerts": {
        "schema_as_declared": SCHEMA_AS_DECLARED,
        "one_number_per_alert": "Every alert has one number and every number one alert, the one the "
                                "ledger gave it: replays, retries and backfills add no alert and no number.",
        "evidence_stored": "Every alert about a frame that was decoded has its annotated image stored under "
                           "annotated/, and its crop when it is about one object.",
    },
}


def check_hour(key: str, alerts: pa.Table, ledger, store: Storage, drawable: set, failures: dict,
               occurrences: dict[str, str | None]) -> None:
    """`drawable`: the (source, frame) pairs whose image decoded when processed; `occurrences`: the
    occurrence of each alert key the rules raised (the number is the occurrence's when it has one)."""
    if problems := schema_problems(alerts, ALERTS_SCHEMA):
        failures["alerts", "schema_as_declared"][key] = problems
    rows = alerts.to_pylist()
    wrong = [f"{r['number']}: {r['alert_key']}" for r in rows
             if ledger.given(r["alert_key"], occurrences.get(r["alert_key"])) != r["number"]]
    numbers, keys = [r["number"] for r in rows], [r["alert_key"] for r in rows]
    if len(set(numbers)) != len(numbers) or len(set(keys)) != len(keys) or wrong:
        failures["alerts", "one_number_per_alert"][key] = {"not_the_ledgers": wrong[:20],
                                                           "repeated": len(numbers) - len(set(numbers))}
    missing = [r["number"] for r in rows
               if ((r["source_id"], r["frame_id"]) in drawable
                   and (not r["annotated_key"] or (r["detection_index"] is not None and not r["crop_key"])))
               or any(k and not store.exists(k) for k in (r["annotated_key"], r["crop_key"]))]
    if missing:
        failures["alerts", "evidence_stored"][key] = missing[:20]
