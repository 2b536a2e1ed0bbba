"""Deleting by age what the store keeps, and recording what was deleted.

Every kind of object has the day it belongs to in its key (docs/contracts.md): `frames/<source>/<date>/`,
`annotated/<source>/<date>/` (an alert's evidence there too, named `….alert-<number>…`),
`landing/metadata/dt=<date>/`, `reports/daily/<date>.html`, the range ledger's archive
`landing/ranges-archive/dt=<date of its fold>/` (kept as long as landing). A day goes once it is older
than its kind's keeping time: with 30 days, on 2026-11-24 the days up to 2026-10-24 are deleted. The
warehouse is never touched: a frame whose bytes are gone keeps its rows.

A day's objects are recorded in `retention/<date of the sweep>.json` before they are deleted, so a
sweep killed midway is finished by the next one of the same UTC day with the same record (the next
day's counts what was left). Landing goes last of all, and only for
a day whose landed hours all have their tables: the day is marked retired first (`landing.retired_key`),
and its tables are kept as built from then on; the records of what its hours' builds read go with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from imgpipeline.defs.records.keys import LANDING
from imgpipeline.defs.records.ledger import ARCHIVE
from imgpipeline.defs.records.retired import retired_key
from imgpipeline.defs.tables import DETECTIONS, FRAMES
from imgpipeline.defs.warehouse.builds import BUILDS
from imgpipeline.ingest.messages import FRAME_ID, iso_utc
from imgpipeline.resources.settings import FromEnv, setting
from imgpipeline.resources.storage import BadObject, Storage, clean_key

RECORDS = "retention"
DAY = re.compile(r"(?:dt=)?([0-9]{4}-[0-9]{2}-[0-9]{2})")
HOUR = re.compile(r"hour=([0-9]{2})")


class DataRetention(FromEnv, dg.ConfigurableResource):
    """How many days each kind of object is kept (0: for ever)."""

    frames_keep_days: int = setting(
        "IMGPIPELINE_FRAMES_KEEP_DAYS", 30,
        "days the frames' bytes are kept under frames/ (by their capture day); 0: for ever. Their rows stay "
        "in the warehouse", ge=0)
    annotated_keep_days: int = setting(
        "IMGPIPELINE_ANNOTATED_KEEP_DAYS", 30,
        "days the annotated copies of frames are kept under annotated/ (alerts' evidence aside); 0: for ever",
        ge=0)
    evidence_keep_days: int = setting(
        "IMGPIPELINE_EVIDENCE_KEEP_DAYS", 0,
        "days an alert's evidence (its images and clip: annotated/….alert-<number>…) is kept; 0: for ever, "
        "as long as the alert itself", ge=0)
    landing_keep_days: int = setting(
        "IMGPIPELINE_LANDING_KEEP_DAYS", 30,
        "days the landing files are kept; an older day's go once each of its hours has its tables, which "
        "are kept as built from then on (a late frame of that day lands, but is not added); 0: for ever",
        ge=0)
    reports_keep_days: int = setting(
        "IMGPIPELINE_REPORTS_KEEP_DAYS", 365, "days the daily reports are kept; 0: for ever", ge=0)
    dead_letters_keep_days: int = setting(
        "IMGPIPELINE_DEAD_LETTERS_KEEP_DAYS", 30,
        "days the broker keeps dead letters (retention.ms of the dead-letter topics, which the retention "
        "job sets); 0: for ever", ge=0)

    def before(self, kind: str, today: date) -> date | None:
        """The first day of `kind` that is kept (older ones are deleted), or None when all are kept."""
        days = getattr(self, f"{KINDS[kind].setting}_keep_days")
        return today - timedelta(days=days) if days else None


@dataclass(frozen=True)
class Kind:
    """One kind of object: where its days are (`<top>/<source>/<day>/`, `<top>/<day>/` or a file a day
    `<top>/<day>.…`), and which keys of a day are of the kind."""

    setting: str
    top: str
    layout: str
    selects: Callable[[str], bool] = lambda key: True


def _evidence(key: str) -> bool:
    return ".alert-" in key.rsplit("/", 1)[-1]


KINDS = {
    "frames": Kind("frames", "frames", "source/day"),
    "annotated": Kind("annotated", "annotated", "source/day", selects=lambda key: not _evidence(key)),
    "evidence": Kind("evidence", "annotated", "source/day", selects=_evidence),
    "reports": Kind("reports", "reports/daily", "day file"),
    "ranges_archive": Kind("landing", ARCHIVE, "day"),
    # Last: a day's landing goes only after everything else of the day was dealt with.
    "landing": Kind("landing", LANDING, "day"),
}


def day_of(name: str) -> date | None:
    """The day a folder or report stands for (`2026-11-24`, `dt=2026-11-24`, `2026-11-24.html`)."""
    found = DAY.fullmatch(name.removesuffix(".html"))
    try:
        return date.fromisoformat(found.group(1)) if found else None
    except ValueError:  # 2026-13-45
        return None


def old_days(store: Storage, name: str, kind: Kind, before: date) -> Iterator[tuple[date, str, str]]:
    """(day, label, prefix) of each day of the kind older than `before`, oldest first; the label is the
    source, or the kind's name when days are not kept per source. A folder whose name is not a source id
    or a day (a stray upload, a hostile key) is left alone."""
    found = []
    if kind.layout == "day file":
        for key in store.list(f"{kind.top}/"):
            file = key[len(kind.top) + 1:]
            if "/" not in file and (day := day_of(file)) is not None and day < before:
                found.append((day, name, key))
        return iter(sorted(found))
    tops = [(kind.top, name)]
    if kind.layout == "source/day":
        tops = [(f"{kind.top}/{source}", source) for source in store.folders(f"{kind.top}/")
                if FRAME_ID.match(source)]
    for top, label in tops:
        for folder in store.folders(f"{top}/"):
            if (day := day_of(folder)) is not None and day < before:
                found.append((day, label, f"{top}/{folder}/"))
    return iter(sorted(found))


def unbuilt_hours(store: Storage, day_prefix: str, keys: list[str]) -> list[str]:
    """The hours of a day's landing files without both their frames and detections tables: their landing
    must stay."""
    missing = set()
    for key in keys:
        part = key[len(day_prefix):].split("/", 1)[0]
        if (hour := HOUR.fullmatch(part)) is None:
            continue
        day = day_of(day_prefix.rstrip("/").rsplit("/", 1)[-1])
        moment = datetime(day.year, day.month, day.day, int(hour.group(1)), tzinfo=UTC)
        if not all(store.exists(table.hour_key(moment)) for table in (FRAMES, DETECTIONS)):
            missing.add(part)
    return sorted(missing)


def retire(store: Storage, day: date, prefix: str, keys: list[str], record: dict, log, dry_run: bool) -> bool:
    """Mark a day's landing retired, unless one of its hours has no tables yet (then it is kept, and
    the record says why); True when its files may go."""
    if missing := unbuilt_hours(store, prefix, keys):
        why = f"no tables for {', '.join(missing)}"
        record["kept"].setdefault("landing", {})[day.isoformat()] = why
        log(f"landing of {day}: kept ({why})")
        return False
    if not dry_run:
        store.put(retired_key(day), json.dumps({"retired_at": iso_utc(datetime.now(UTC)),
                                                "objects": len(keys)}).encode())
    return True


def of_the_layout(keys: list[str]) -> tuple[list[str], list[str]]:
    """Keys the store takes as keys, and the others (`a//b`, a folder object `…/`): never deleted here."""
    good, odd = [], []
    for key in keys:
        try:
            good.append(clean_key(key))
        except BadObject:
            odd.append(key)
    return good, odd


def record_key(today: date) -> str:
    return f"{RECORDS}/{today.isoformat()}.json"


def load_record(store: Storage, today: date, retention: DataRetention) -> dict:
    key = record_key(today)
    if store.exists(key):
        try:
            return json.loads(store.get(key, max_bytes=50_000_000))
        except ValueError:
            pass  # damaged: written again from here on
    return {"day": today.isoformat(), "started_at": iso_utc(datetime.now(UTC)),
            "keep_days": retention.model_dump(), "deleted": {}, "kept": {}, "finished_at": None}


def sweep(store: Storage, retention: DataRetention, today: date | None = None, log=print,
          dry_run: bool = False,
          keep_dead_letters: Callable[[int], dict] | None = None) -> dict:
    """Delete every kind's days past its keeping time, and with `keep_dead_letters` (the broker's) set how
    long dead letters are kept; the record of what was (or would be) deleted."""
    today = today or datetime.now(UTC).date()
    record = load_record(store, today, retention)
    key = record_key(today)
    for name, kind in KINDS.items():
        before = retention.before(name, today)
        if before is None:
            continue
        for day, label, prefix in old_days(store, name, kind, before):
            keys, odd = of_the_layout([k for k in store.list(prefix) if kind.selects(k)])
            if odd:
                record["skipped"] = sorted(set(record.get("skipped", [])) | set(odd))[:1000]
                log(f"{name} of {day}: {plural(len(odd), 'key')} not of the layout left alone: {odd[0]!r}")
            if not keys:
                continue
            if name == "landing":
                if not retire(store, day, prefix, keys, record, log, dry_run):
                    continue
                keys += store.list(f"{BUILDS}/dt={day.isoformat()}/")  # what its builds read: never again
            counted = record["deleted"].setdefault(name, {}).setdefault(day.isoformat(), {})
            # A sweep killed after recording a folder finds fewer of its objects: the record keeps the most.
            counted[label] = max(counted.get(label, 0), len(keys))
            if not dry_run:
                store.put(key, json.dumps(record, indent=1).encode())
                store.delete_many(keys)
            log(f"{name} of {day} ({label}): {plural(len(keys), 'object')} {'would be ' if dry_run else ''}"
                "deleted")
    if keep_dead_letters is not None and not dry_run:
        days = retention.dead_letters_keep_days
        record["dead_letters"] = {"retention_ms": keep_dead_letters(days)}
        log(f"dead letters: {', '.join(record['dead_letters']['retention_ms']) or 'no topic yet'} kept "
            f"{f'{days} days' if days else 'for ever'}")
    record["finished_at"] = iso_utc(datetime.now(UTC))
    if not dry_run:
        store.put(key, json.dumps(record, indent=1).encode())
    return record


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def totals(record: dict) -> dict[str, int]:
    """Objects deleted per kind in a record."""
    return {kind: sum(sum(labels.values()) for labels in days.values())
            for kind, days in record["deleted"].items()}


def lifecycle_rules(retention: DataRetention, prefix: str) -> tuple[dict, list[str]]:
    """S3 lifecycle rules that expire what the sweep deletes, for a bucket whose root is `prefix`; and
    what they cannot say (left to the sweep). S3 counts an object's age from its upload, the sweep from
    the day in its key: a rule waits a day more."""
    root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    rules, notes = [], []

    def expire(name: str, folder: str, days: int) -> None:
        rules.append({"ID": f"imgpipeline-{name}", "Filter": {"Prefix": f"{root}{folder}"},
                      "Status": "Enabled", "Expiration": {"Days": days + 1}})

    if retention.frames_keep_days:
        expire("frames", "frames/", retention.frames_keep_days)
    if retention.annotated_keep_days:
        if retention.evidence_keep_days == retention.annotated_keep_days:
            expire("annotated", "annotated/", retention.annotated_keep_days)
        else:
            notes.append("annotated/: alerts' evidence lies beside the annotated frames and is kept "
                         "another time (IMGPIPELINE_EVIDENCE_KEEP_DAYS): no prefix tells them apart, so "
                         "the retention job deletes them")
    if retention.reports_keep_days:
        expire("reports", "reports/daily/", retention.reports_keep_days)
    if retention.landing_keep_days:
        expire("ranges-archive", "landing/ranges-archive/", retention.landing_keep_days)
        notes.append("landing/metadata/: the retention job deletes a day only once its hours have tables, "
                     "and marks it so that a late frame never rebuilds its tables from what is left; a "
                     "lifecycle rule cannot")
    return {"Rules": rules}, notes
