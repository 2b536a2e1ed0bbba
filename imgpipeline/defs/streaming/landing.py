"""The streaming domain's side of the landing (the records core, defs/records/, holds the record, its keys
and the one reader): a run's spool, the writer of its landing files; the frames already landed that it
screens its own against; and the sources index, when each camera was last seen.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from datetime import datetime

from imgpipeline.defs.records.keys import RANGE_NAME, landing_key, ranges_of
from imgpipeline.defs.records.reader import parse_records, read_records
from imgpipeline.defs.records.record import OUT_OF_RANGE, LandingRecord
from imgpipeline.ingest.messages import BadInput, iso_utc, parse_time
from imgpipeline.resources.storage import BadObject, Storage


class Spool:
    """One hour's landing records on local disk until the run writes them: memory stays flat."""

    def __init__(self):
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close() or drop())
        self.sha256 = hashlib.sha256()
        self.records = 0
        self.frames: set[tuple] = set()

    def add(self, record: LandingRecord) -> None:
        line = record.to_json() + b"\n"
        self.file.write(line)
        self.sha256.update(line)
        self.records += 1
        self.frames.add(record.identity)

    def land(self, store: Storage, key: str) -> str:
        """Write the spooled records to `key`; returns its URI. A file already there keeps the records
        of frames this run did not see (a replay whose head retention deleted): landing never shrinks."""
        if store.exists(key):
            for record in read_records(store, key):
                if record.identity not in self.frames:
                    self.add(record)
        self.file.seek(0)
        return store.put_file(key, self.file, sha256=self.sha256.hexdigest())

    def drop(self, frames: set[tuple]) -> list[LandingRecord]:
        """Take the processed records of `frames` out of the spool (another range landed them); returns
        them."""
        self.file.seek(0)
        kept, dropped = [], []
        for record in parse_records(self.file.read()):
            (dropped if record.processed and record.identity in frames else kept).append(record)
        if dropped:
            self.file.close()
            self.__init__()
            for record in kept:
                self.add(record)
        return dropped

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class Neighbours:
    """The ranges whose landing a run over [start, …) screens its frames against: those of its topic,
    partition and generation that end less than `window` offsets before its start (or after it), and
    every run over explicit URIs. A source's frames share a partition (its key), so a frame sent again
    comes a little later on the same partition; what a run reads no longer grows with its hour."""

    topic: str
    partition: int
    generation: int
    start: int
    window: int

    def include(self, name: str) -> bool:
        found = RANGE_NAME.fullmatch(name)
        if found is None:
            return True  # uris-…: runs by hand, few
        topic, partition, _, end, generation = found.groups()
        return ((topic, int(partition), int(generation or 0)) == (self.topic, self.partition, self.generation)
                and int(end) > self.start - self.window)


class Landed:
    """Per event-time hour, the frames (source_id, frame_id) other ranges processed there, as read from
    landing, and the version of each landing file they were read from. A run reads an hour at its first
    frame of it and, once its frames are processed and before it asks whether it may land them, the
    hour's files of its neighbours that are new or written again since: a range of its partition that
    landed meanwhile (two runs side by side after a takeover) has its frames taken as duplicates instead
    of landed twice. A run of many ranges keeps one for all of them."""

    def __init__(self):
        self.frames: dict[datetime, set[tuple]] = {}
        self.files: dict[datetime, dict[str, str]] = {}  # per hour: landing file → the version read
        self.own: set[str] = set()  # the landing files this run wrote

    def of(self, store: Storage, hour: datetime, name: str, near: Neighbours | None = None) -> set[tuple]:
        """The frames processed in the hour by the neighbouring ranges (and those this run adds)."""
        if (found := self.frames.get(hour)) is None:
            self.since(store, hour, name, near)
            found = self.frames[hour]
        return found

    def since(self, store: Storage, hour: datetime, name: str, near: Neighbours | None = None) -> set[tuple]:
        """The frames in the hour's files of other ranges (only the `near` ones when given: a listing of
        their names alone) that are new or written again since they were read, added to those known. A
        frame landed only as an error (or out of range) is not among them, so a message sent again once
        right is processed. A file compacted away between the listing and its read is listed again."""
        own, read = landing_key(hour, name), self.files.setdefault(hour, {})
        # The run's own range may lie inside a compacted file of its partition: its own records are not
        # someone else's (a range run again detects every frame again).
        mine = ranges_of([own])
        found: set[tuple] = set()
        for _ in range(3):
            folder = landing_key(hour, "").removesuffix(".jsonl")
            versions = {key: tag for start in (("",) if near is None else (f"{near.topic}-{near.partition}-",
                                                                           "uris-"))
                        for key, tag in store.named(folder, start).items() if key.endswith(".jsonl")}
            keys = [key for key, tag in versions.items() if key != own and key not in self.own
                    and read.get(key) != tag
                    and (near is None or near.include(key.rsplit("/", 1)[-1].removesuffix(".jsonl")))]
            vanished = False
            for key in keys:
                same = ranges_of([key]).keys() & mine.keys()
                start, end = (mine[next(iter(same))][0][:2]) if same else (0, 0)
                try:
                    records = list(read_records(store, key))
                except BadObject:  # deleted since the listing: compacted into a file the next listing has
                    vanished = True
                    continue
                read[key] = versions[key]
                found.update(record.identity for record in records if record.processed
                             and not (record.offset is not None and start <= record.offset < end))
            if not vanished:
                break
        self.frames.setdefault(hour, set()).update(found)
        return found

    def wrote(self, key: str) -> None:
        """A landing file this run wrote: never read back as another range's."""
        self.own.add(key)


SOURCES = "landing/sources"
SOURCE_STEP_S = 10.0  # a run of many ranges writes a source's times when they moved this far


def record_sources(store: Storage, last: dict[str, dict], wrote: dict[str, dict] | None = None) -> list[str]:
    """`landing/sources/<source_id>.json`: when each source's latest frame was captured, reached the
    broker and was processed. A run only moves these forward, so they say when a camera fell silent
    long after its frames left the landing hours anyone reads; deleting a file retires the source.
    `wrote`: what this run wrote of each source before (a run of many ranges keeps it): a source whose
    times moved less than SOURCE_STEP_S since is passed over (silence is told in minutes; a camera at
    a frame a second would otherwise be read and written, synced, at every range)."""
    written = []
    for source, times in sorted(last.items()):
        if wrote is not None and not moved(wrote.get(source), times):
            continue
        key = f"{SOURCES}/{source}.json"
        known = source_times(store, key)
        merged = {name: max(filter(None, (valid_time(known.get(name)), value)), default=None)  # ISO UTC
                  for name, value in times.items()}
        if merged != {name: known.get(name) for name in times}:
            store.put(key, json.dumps({"source_id": source, **merged}).encode())
            written.append(key)
        if wrote is not None:
            wrote[source] = merged
    return written


def valid_time(value) -> str | None:
    """A time read from a source's file as ISO UTC (text order is time order), or None: a damaged one
    (edited by hand, another writer's) is written over instead of winning every comparison."""
    try:
        return iso_utc(parse_time(value)) if isinstance(value, str) else None
    except (BadInput, ValueError):
        return None


def moved(before: dict | None, times: dict) -> bool:
    """Whether any of a source's times is SOURCE_STEP_S past what was written of it (or was never)."""
    if before is None:
        return True
    try:
        return any(value and (not before.get(name) or
                              (parse_time(value) - parse_time(before[name])).total_seconds() >= SOURCE_STEP_S)
                   for name, value in times.items())
    except (BadInput, TypeError, ValueError, AttributeError):  # a time damaged in the file it came from
        return True


def latest_times(last: dict[str, dict], record: LandingRecord) -> None:
    """Fold a landed record of a well-formed message into the per-source latest times."""
    if record.schema is None:
        return  # unparsed: its source is a stand-in, no camera
    times = last.setdefault(record.source_id, {})
    # out of range: a clock years ahead would stay the source's latest capture for good
    captured = None if record.status == OUT_OF_RANGE else record.captured_at
    for name, moment in (("captured_at", captured), ("ingested_at", record.ingested_at),
                         ("processed_at", record.processed_at)):
        if moment:
            value = iso_utc(parse_time(moment))
            times[name] = max(times.get(name) or value, value)


def source_times(store: Storage, key: str) -> dict:
    try:
        return json.loads(store.get(key, max_bytes=10_000)) if store.exists(key) else {}
    except (ValueError, OSError, BadObject):
        return {}  # damaged or unreadable: the next run rewrites it


def known_sources(store: Storage) -> dict[str, dict]:
    """Every source a run has recorded: its last capture, ingest and processing times (ISO UTC)."""
    found = {}
    for key in store.list(f"{SOURCES}/"):
        if key.endswith(".json"):
            times = source_times(store, key)
            if times.get("source_id"):
                found[times["source_id"]] = times
    return found
