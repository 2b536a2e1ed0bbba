"""The one reader of landing records: the landing files of an hour (or of all), and their records."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from imgpipeline.defs.hours import hour_path
from imgpipeline.defs.records.keys import LANDING
from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.resources.storage import BadObject, Storage


def landing_keys(store: Storage, hour: datetime | None = None) -> list[str]:
    """The landing files of an event-time hour, or of every hour."""
    prefix = f"{LANDING}/{hour_path(hour)}/" if hour else f"{LANDING}/"
    return [key for key in store.list(prefix) if key.endswith(".jsonl")]


def landing_versions(store: Storage, hour: datetime) -> dict[str, str]:
    """The landing files of an event-time hour, each with the tag of its version (`Storage.versions`)."""
    return {key: tag for key, tag in store.versions(f"{LANDING}/{hour_path(hour)}/").items()
            if key.endswith(".jsonl")}


def read_records(store: Storage, key: str) -> Iterator[LandingRecord]:
    """The records of one landing file, in the order they were written."""
    return parse_records(store.get(key))


def parse_records(data: bytes) -> Iterator[LandingRecord]:
    """The records of a landing file's bytes, in order."""
    for line in data.splitlines():
        if line.strip():
            yield LandingRecord.from_json(line)


def hour_records(store: Storage, hour: datetime,
                 written_since: datetime | None = None) -> list[LandingRecord]:
    """Every landing record of an event-time hour, as written by the runs; with `written_since`, only
    those of the files written since then (the store's clock)."""
    if written_since is None:
        keys = landing_keys(store, hour)
    else:
        since = written_since.timestamp()
        keys = [key for key, at in store.written(f"{LANDING}/{hour_path(hour)}/").items()
                if key.endswith(".jsonl") and at >= since]
    return [record for key in keys for record in read_records(store, key)]


def all_records(store: Storage) -> list[LandingRecord]:
    """Every landing record of every hour."""
    return [record for key in landing_keys(store) for record in read_records(store, key)]


class Landing:
    """Every landing record of every hour, for whoever looks at a landing again and again while it grows
    (a wait, a watch, a count): a look costs the files new or written again since the last one (by the
    version tags of `Storage.versions`). The records it gives are shared between looks: not to be changed."""

    def __init__(self, store: Storage, keep: bool = True, max_bytes: int | None = None):
        """`keep`: hold every file's records (`records`), a file that holds no landing records an error;
        else only the files' version tags, for a look that folds what is new file by file (`look`), a
        damaged file (or one over `max_bytes`) passed over until it is written again."""
        self.store, self.keep, self.max_bytes = store, keep, max_bytes
        self._files: dict[str, tuple[str, list[LandingRecord] | None]] = {}
        self.damaged: set[str] = set()  # the files passed over at the last look

    def look(self, hours: list[datetime] | None = None,
             fold: Callable[[list[LandingRecord]], None] | None = None) -> list[LandingRecord]:
        """The records of the files new or written again since the last look, in the folders of those
        event-time `hours` only when given (the files of other hours are forgotten); a file gone since the
        listing (compacted, retired) is left out. With `fold`, each file's records go to it as the file is
        read, and none are returned (memory stays one file's)."""
        prefixes = [f"{LANDING}/"] if hours is None else [f"{LANDING}/{hour_path(h)}/" for h in hours]
        files, new, damaged = {}, [], set()
        for prefix in prefixes:
            for key, tag in self.store.versions(prefix).items():
                if not key.endswith(".jsonl"):
                    continue
                held = self._files.get(key)
                if held and held[0] == tag:
                    files[key] = held
                    damaged |= {key} & self.damaged
                    continue
                try:
                    records = list(parse_records(self.store.get(key, max_bytes=self.max_bytes)))
                except BadObject:
                    if self.keep or not self.store.exists(key):
                        continue  # deleted since the listing
                    records = []  # over max_bytes
                    damaged.add(key)
                except (AttributeError, TypeError, ValueError, RecursionError):
                    if self.keep:
                        raise
                    records = []  # not landing records (written by hand, damaged): read once rewritten
                    damaged.add(key)
                files[key] = tag, records if self.keep else None
                if fold is not None:
                    fold(records)
                else:
                    new += records
        self._files, self.damaged = files, damaged
        return new

    def records(self) -> list[LandingRecord]:
        """The records as all_records gives them now; a file gone since the listing (compacted, retired)
        is left out."""
        self.look()
        return [record for _, records in self._files.values() for record in records or ()]
