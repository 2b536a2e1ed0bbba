"""Landing records: the one module that writes and reads `landing/metadata/` (docs/contracts.md).

A run lands one JSON-lines file per event-time hour it saw, named after its offset range:
`landing/metadata/dt=<date>/hour=<HH>/<topic>-<partition>-<start>-<end>.jsonl` (`uris-<hash>.jsonl`
for a run over explicit frame URIs), so re-running a range rewrites the same files.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import TypedDict

from imgpipeline.defs.hours import hour_path
from imgpipeline.ingest.messages import iso_utc, parse_time, sha256_hex
from imgpipeline.resources.storage import BadObject, Storage

LANDING = "landing/metadata"

# A frame whose capture time lies before the partitions' start or too far ahead of the broker's time
# (defs/partitions.py), or in a retired day: recorded, not detected, in the hour it reached the broker.
OUT_OF_RANGE = "out_of_range"
# Statuses of a frame that was not processed: another message for the same frame is processed all the
# same, and a processed record of the frame is kept over these whatever their order.
UNPROCESSED = ("error", OUT_OF_RANGE)


def range_name(topic: str, partition: int, start: int, end: int, generation: int = 0) -> str:
    """`<topic>-<partition>-<start>-<end>`: a range's landing file name and its run key; after the
    topic's offsets were reset (`-g<generation>`), so reused offsets never collide with old ones."""
    return f"{topic}-{partition}-{start}-{end}" + (f"-g{generation}" if generation else "")


def uris_name(uris: list[str]) -> str:
    """`uris-<hash>`: the landing file name of a run over explicit frame URIs (same URIs, same name)."""
    return f"uris-{sha256_hex(json.dumps(sorted(uris)).encode())[:16]}"


def landing_key(hour: datetime, name: str) -> str:
    return f"{LANDING}/{hour_path(hour)}/{name}.jsonl"


class LandedDetection(TypedDict):
    """One object a detector found in a frame; the box is x, y, w, h in pixels of the frame."""

    class_id: int
    class_name: str
    confidence: float
    box: list[int]


@dataclass(slots=True, kw_only=True)
class LandingRecord:
    """One frame as a run processed it: a line of a landing file (docs/contracts.md), its fields in
    the order they are written. Built by the run (`processing.py`), read back by `read_records`."""

    # the frame message's fields (for a message that could not be parsed: schema None, frame_id
    # `<topic>-<partition>-<offset>`, source_id the stand-in of its key (`stand_in_source`; None in files
    # landed before stand-ins), captured_at the broker's time)
    schema: int | None
    frame_id: str
    source_id: str | None
    captured_at: str
    uri: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    content_type: str | None = None
    # what the run made of it
    status: str | None = None
    error: str | None = None
    ingested_at: str | None = None
    processed_at: str | None = None
    run_id: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    bytes: int | None = None
    brightness: float | None = None
    contrast: float | None = None
    sharpness: float | None = None
    # what produced its detections (absent from records landed before they were recorded)
    model: str | None = None
    model_sha256: str | None = None
    engine: str | None = None
    precision: str | None = None
    object_count: int = 0
    detections: list[LandedDetection] = field(default_factory=list)

    @property
    def identity(self) -> tuple[str | None, str]:
        """A frame is (source_id, frame_id): two cameras may both send IMG_0001.jpg."""
        return self.source_id, self.frame_id

    @property
    def processed(self) -> bool:
        """True for a frame that was processed (detected, dark or shed), not an error or out of range."""
        return self.status not in UNPROCESSED

    @property
    def event_hour(self) -> datetime:
        """The UTC hour of the capture time: the record's landing folder and warehouse partition. A
        frame captured out of range goes to the hour it reached the broker, which a partition reads."""
        moment = self.ingested_at if self.status == OUT_OF_RANGE else self.captured_at
        return parse_time(moment).replace(minute=0, second=0, microsecond=0)

    def to_json(self) -> bytes:
        return json.dumps({name: getattr(self, name) for name in _FIELDS}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, line: bytes | str) -> LandingRecord:
        written = json.loads(line)
        try:
            return cls(**written)
        except TypeError:  # written by another version: fields it lacks are empty, others are left out
            return cls(**{name: written.get(name) for name in _FIELDS
                          if name in written or name in _REQUIRED})


_FIELDS = tuple(f.name for f in fields(LandingRecord))
_REQUIRED = ("schema", "frame_id", "source_id", "captured_at")


class Spool:
    """One hour's landing records on local disk until the run writes them: memory stays flat."""

    def __init__(self):
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
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

    def close(self) -> None:
        self.file.close()


RETIRED = "landing/retired"


def retired_key(day: date) -> str:
    """`landing/retired/<date>.json`: written by retention before it deletes a day's landing files. From
    then on the day's tables are kept as built: a late frame of the day lands out of range, and nothing
    rebuilds them from what is left."""
    return f"{RETIRED}/{day.isoformat()}.json"


def is_retired(store: Storage, day: date) -> bool:
    return store.exists(retired_key(day))


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
    return [record for key in landing_keys(store) for record in read_records(store, key)]


RANGE_NAME = re.compile(r"(.+)-([0-9]+)-([0-9]+)-([0-9]+)(?:-g([0-9]+))?")


def ranges_of(keys) -> dict[tuple[str, int, int], list[tuple[int, int, str]]]:
    """Landing files named after ranges, per (topic, partition, generation): (start, end, key) in range
    order. Files of runs over explicit URIs are not among them."""
    groups: dict[tuple[str, int, int], list[tuple[int, int, str]]] = {}
    for key in keys:
        if (found := RANGE_NAME.fullmatch(key.rsplit("/", 1)[-1].removesuffix(".jsonl"))) is not None:
            topic, partition, start, end, generation = found.groups()
            group = (topic, int(partition), int(generation or 0))
            groups.setdefault(group, []).append((int(start), int(end), key))
    return {group: sorted(files) for group, files in groups.items()}


def span_key(hour: datetime, group: tuple[str, int, int], files: list[tuple[int, int, str]]) -> str:
    """The landing key of a partition's files of an hour compacted: named after the span of their ranges."""
    topic, partition, generation = group
    return landing_key(hour, range_name(topic, partition, files[0][0], max(end for _, end, _ in files),
                                        generation))


def compact_files(store: Storage, hour: datetime, group: tuple[str, int, int],
                  files: list[tuple[int, int, str]]) -> str:
    """One file of a partition's landing files of an hour, named after the span of their ranges: their
    lines in range order, a line two of them share once. Returns its key; the files stay. One file is
    in memory at a time, and a 16-byte digest of each line: the rest waits in a temporary file."""
    into = span_key(hour, group, files)
    seen, digest = set(), hashlib.sha256()
    with tempfile.TemporaryFile() as spooled:
        for *_, key in files:
            for line in store.get(key).splitlines():
                mark = hashlib.blake2b(line, digest_size=16).digest()
                if line.strip() and mark not in seen:
                    seen.add(mark)
                    spooled.write(line + b"\n")
                    digest.update(line + b"\n")
        spooled.seek(0)
        store.put_file(into, spooled, sha256=digest.hexdigest())
    return into


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


def landed_frames(store: Storage, hour: datetime, except_name: str,
                  near: Neighbours | None = None) -> set[tuple]:
    """The frames (source_id, frame_id) already processed in an event-time hour by other ranges (only the
    `near` ones when given); a frame landed only as an error (or out of range) is not among them, so a
    message sent again once right is processed."""
    own = landing_key(hour, except_name)
    keys = [key for key in landing_keys(store, hour) if key != own
            and (near is None or near.include(key.rsplit("/", 1)[-1].removesuffix(".jsonl")))]
    # The run's own range may lie inside a compacted file of its partition: its own records are not
    # someone else's (a range run again detects every frame again).
    mine = ranges_of([own])
    found = set()
    for key in keys:
        same = ranges_of([key]).keys() & mine.keys()
        start, end = (mine[next(iter(same))][0][:2]) if same else (0, 0)
        found.update(record.identity for record in read_records(store, key) if record.processed
                     and not (record.offset is not None and start <= record.offset < end))
    return found


SOURCES = "landing/sources"


def record_sources(store: Storage, last: dict[str, dict]) -> list[str]:
    """`landing/sources/<source_id>.json`: when each source's latest frame was captured, reached the
    broker and was processed. A run only moves these forward, so they say when a camera fell silent
    long after its frames left the landing hours anyone reads; deleting a file retires the source."""
    written = []
    for source, times in sorted(last.items()):
        key = f"{SOURCES}/{source}.json"
        known = source_times(store, key)
        merged = {name: max(filter(None, (known.get(name), value)), default=None)  # ISO UTC: text order
                  for name, value in times.items()}
        if merged != {name: known.get(name) for name in times}:
            store.put(key, json.dumps({"source_id": source, **merged}).encode())
            written.append(key)
    return written


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
