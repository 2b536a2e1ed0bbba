"""Send frames to Kafka: store the bytes first (claim check), then the message.

A ledger of sent frames (frame id and sha256, appended after the broker acknowledged
them) makes re-running a producer over the same input send nothing twice; a frame
already stored with the same sha256 is not uploaded again.
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from imgpipeline import ConfigError
from imgpipeline.durable import replace_durably
from imgpipeline.ingest.messages import FrameMessage, frame_key, iso_utc, sha256_hex
from imgpipeline.paths import state_dir


@dataclass(frozen=True)
class Frame:
    """One frame from a source, ready to send."""

    frame_id: str
    data: bytes
    captured: datetime
    width: int
    height: int


@dataclass
class ProduceSummary:
    """What a producer did: frames Kafka acknowledged, frames it had sent before, frames that failed (each
    with its reason; none of them is in the ledger, so the next run sends them again)."""

    sent: int = 0
    already_present: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"sent {self.sent}, already present {self.already_present}, failed {self.failed}"


@dataclass(frozen=True)
class Outcome:
    """What became of one frame given to a producer."""

    frame_id: str
    sha256: str
    failure: str | None = None  # why it is not on Kafka; None: acknowledged, now or on an earlier run
    permanent: bool = False  # sending it again fails the same way (too large; its key holds other bytes)


# The video files of a source whose start a re-run finds (about 60 bytes each, the whole read per run): a
# file re-run after 1000 newer ones starts at a new time.
VIDEO_STARTS_KEPT = 1000


# The capture days of frames a producer keeps in memory: a live source looks up today (and yesterday
# around midnight); a day looked up again after it was dropped is read again from its file.
DAYS_IN_MEMORY = 3


def day_of(moment: datetime) -> str:
    """The UTC day of a capture time, as the ledger's and journal's day files are named."""
    return moment.astimezone(UTC).date().isoformat()


def modified_day(path: Path) -> str:
    """The UTC day a file was last written."""
    return day_of(datetime.fromtimestamp(path.stat().st_mtime, UTC))


SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")


def read_day_lines(path: Path, value: re.Pattern) -> list[tuple[str, str]]:
    """The `key value` lines of a day file whose value is whole (matches `value`): a line cut short by a
    kill mid-append is left out (its frame is sent again, and landing keeps it once); bytes that are not
    text (a damaged disk) spoil only their own line."""
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    return [(key, found) for key, _, found in (line.partition(" ") for line in text.splitlines())
            if key and value.match(found)]


def append_lines(path: Path, lines: list[str], sync: bool = False) -> None:
    """Append whole lines to a day file; after a line cut short by a kill, on lines of their own (the cut one
    is left out when read: its value is not whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as handle:
        cut = handle.tell() > 0 and (handle.seek(-1, os.SEEK_END) or handle.read(1)) != b"\n"
        handle.write(("\n" if cut else "").encode() + "".join(f"{line}\n" for line in lines).encode())
        if sync:
            handle.flush()
            os.fsync(handle.fileno())


def write_lines(path: Path, lines: list[str]) -> None:
    """Replace a file with whole lines, durably (a kill leaves the old file or the new)."""
    replace_durably(path, io.BytesIO("".join(f"{line}\n" for line in lines).encode()))


class Ledger:
    """Frames this source has sent to this topic: a file per capture day (UTC) in `<path>.days/`, one
    `frame_id sha256` line per frame, appended after Kafka acknowledged it.

    Nothing is read at start: a day's file is read when a frame captured that day is first looked up, and
    at most `DAYS_IN_MEMORY` days are held (the least recently used dropped first), so start-up and memory
    stay flat however long the source has been sending. A ledger of one file (`<path>`, written before the
    ledger was kept by day) is read only for frames captured on or before the day it was last written.
    """

    def __init__(self, path: Path, starts_kept: int = VIDEO_STARTS_KEPT):
        self.path, self.starts_kept = path, starts_kept
        self.days_dir = path.with_name(path.name + ".days")
        self._days: dict[str, set[tuple[str, str]]] = {}  # insertion order: least recently used first
        self._legacy: set[tuple[str, str]] | None = None
        self._legacy_written: str | None = None  # the day the one-file ledger was last written; "": none

    def has(self, frame_id: str, digest: str, captured: datetime) -> bool:
        """Whether this frame (its id and bytes) was acknowledged by Kafka on an earlier send."""
        day = day_of(captured)
        return (frame_id, digest) in self._day(day) or (frame_id, digest) in self._legacy_before(day)

    def add(self, items: list[tuple[str, str, datetime]]) -> None:
        """Record frames Kafka acknowledged: (frame id, sha256, capture time) each."""
        by_day: dict[str, list[tuple[str, str]]] = {}
        for frame_id, digest, captured in items:
            by_day.setdefault(day_of(captured), []).append((frame_id, digest))
        for day, entries in by_day.items():
            append_lines(self.days_dir / day, [f"{frame_id} {digest}" for frame_id, digest in entries])
            self._day(day).update(entries)

    def entries(self) -> list[tuple[str, str]]:
        """Every (frame id, sha256) recorded, oldest day first (to inspect it: a producer never reads all)."""
        days = sorted(self.days_dir.iterdir()) if self.days_dir.is_dir() else []
        legacy = read_day_lines(self.path, SHA256_HEX) if self.path.is_file() else []
        return legacy + [entry for day in days for entry in read_day_lines(day, SHA256_HEX)]

    @property
    def days_in_memory(self) -> list[str]:
        return list(self._days)

    def _day(self, day: str) -> set[tuple[str, str]]:
        found = self._days.pop(day, None)
        if found is None:
            found = set(read_day_lines(self.days_dir / day, SHA256_HEX))
        self._days[day] = found  # the most recently used last
        while len(self._days) > DAYS_IN_MEMORY:
            self._days.pop(next(iter(self._days)))
        return found

    def _legacy_before(self, day: str) -> set[tuple[str, str]]:
        if self._legacy_written is None:  # looked at once: nothing writes that file any more
            self._legacy_written = modified_day(self.path) if self.path.is_file() else ""
        if day > self._legacy_written:
            return set()
        if self._legacy is None:
            self._legacy = set(read_day_lines(self.path, SHA256_HEX))
        return self._legacy

    def start_of(self, video: str, given: datetime | None = None) -> datetime:
        """The capture time of a video file's first frame: `given` (and remembered), else the one its last
        run of this source used (the same file: path, size, modification time), else now. A frame sent
        again after a failed delivery that Kafka did take then has the same time, lands in the same hour
        and is a duplicate there (a new time could put it in the next hour, counted twice)."""
        import fcntl
        import hashlib
        import json

        stat = Path(video).stat()
        key = hashlib.sha256(f"{Path(video).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        key = key.hexdigest()[:20]
        starts_file = self.path.with_name(self.path.name + ".starts")
        starts_file.parent.mkdir(parents=True, exist_ok=True)
        # Two producers of the source at once (two files of one camera) each keep their file's start.
        with open(starts_file.with_name(starts_file.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                starts = json.loads(starts_file.read_text()) if starts_file.exists() else {}
                known = {k: datetime.fromisoformat(v) for k, v in starts.items()}
            except (ValueError, TypeError, AttributeError) as exc:
                raise ConfigError(f"{starts_file} is not the video start times this producer wrote "
                                  f"({exc}): delete it, and re-runs of the videos it named start at a new "
                                  "time") from exc
            if given is not None or key not in known:
                known.pop(key, None)  # the newest last: the oldest files are forgotten first
                # As stored: to the millisecond.
                known[key] = datetime.fromisoformat(iso_utc(given or datetime.now(UTC)))
                kept = list(known.items())[-self.starts_kept:]
                partial = starts_file.with_name(f"{starts_file.name}.{os.getpid()}.partial")
                partial.write_text(json.dumps({k: iso_utc(v) for k, v in kept}))
                partial.replace(starts_file)
            return known[key]



def ledger_for(topic: str, source_id: str) -> Ledger:
    return Ledger(state_dir() / "producers" / topic / f"{source_id}.sent")


class FrameProducer:
    """Stores and sends frames of one source; flushes in batches, then records what Kafka acknowledged.

    Never stuck: every frame sent is acknowledged or failed within the Kafka resource's delivery timeout
    (2 minutes by default) of its send, whether the broker is away or back, and a flush never waits longer
    than `kafka.delivery_bound_s` (that and 10 s). So a producer whose broker went away is sending again,
    or has ended, at most that long after the broker returns.
    """

    def __init__(self, kafka, storage, source_id: str, *, inline: bool = False,
                 flush_every: int = 50, ledger: Ledger | None = None):
        self.kafka = kafka
        self.store = storage.open()
        self.source_id = source_id
        self.inline = inline
        self.flush_every = flush_every
        self.ledger = ledger or ledger_for(kafka.frames_topic, source_id)
        self.producer = kafka.producer()
        self.summary = ProduceSummary()
        self._pending: list[tuple[str, str, datetime, object]] = []  # id, sha256, capture time, the send
        self._settled: list[Outcome] = []  # settled since the last flush without waiting for Kafka

    def message(self, frame: Frame, digest: str, uri: str | None) -> FrameMessage:
        return FrameMessage(
            frame_id=frame.frame_id,
            source_id=self.source_id,
            captured_at=iso_utc(frame.captured),
            uri=uri,
            sha256=digest,
            width=frame.width,
            height=frame.height,
        )

    def send(self, frame: Frame) -> bool:
        """Send one frame unless the ledger has it; True when it went to Kafka (flush says how it fared)."""
        from kafka.errors import KafkaError

        digest = sha256_hex(frame.data)
        if self.ledger.has(frame.frame_id, digest, frame.captured):
            self.summary.already_present += 1
            self._settled.append(Outcome(frame.frame_id, digest))
            return False
        key = self.source_id.encode()
        if self.inline:
            message = self.message(frame, digest, None)
            value, headers = frame.data, message.to_headers()
        else:
            object_key = frame_key(self.source_id, frame.captured, frame.frame_id)
            stored = self.store.put_new(object_key, frame.data, sha256=digest)
            if stored not in (None, digest):  # a stored frame is never replaced by other bytes
                self._fail(frame.frame_id, digest, f"{object_key} already holds a different frame (sha256 "
                           f"{stored[:12]}…); give this frame another id or another capture date",
                           permanent=True)
                return False
            value, headers = self.message(frame, digest, self.store.uri(object_key)).to_json(), None
        try:
            if self.producer is None:  # the last one lost track of its sends (see flush)
                self.producer = self.kafka.producer()
            future = self.producer.send(self.kafka.frames_topic, key=key, value=value, headers=headers)
        except KafkaError as exc:  # no room or no metadata within max_block_ms, or over the request size
            self._fail(frame.frame_id, digest, *kafka_failure(exc, self.kafka, size=len(value)))
            return False
        self._pending.append((frame.frame_id, digest, frame.captured, future))
        if len(self._pending) >= self.flush_every:
            self.flush()
        return True

    def _fail(self, frame_id: str, digest: str, reason: str, permanent: bool = False) -> None:
        self.summary.failed += 1
        self.summary.failures.append(f"{frame_id}: {reason}")
        self._settled.append(Outcome(frame_id, digest, reason, permanent))

    def flush(self) -> list[Outcome]:
        """Wait for Kafka's answer to each frame sent since the last flush (acks=all), at most
        `kafka.delivery_bound_s`; record the acknowledged ones as sent and count the others as failed with
        their reason. Returns what became of every frame given since the last flush."""
        from kafka.errors import KafkaTimeoutError

        if self.producer is not None:
            try:
                self.producer.flush(timeout=self.kafka.delivery_bound_s)
            except KafkaTimeoutError:
                # The client kept a send unanswered past its own delivery timeout: it lost track of it. It is
                # abandoned without waiting (its close flushes first, and says it timed out); what it held
                # counts as failed below, and the next send opens a fresh one.
                try:
                    self.producer.close(timeout=0)
                except KafkaTimeoutError:
                    pass
                self.producer = None
        acknowledged = []
        for frame_id, digest, captured, future in self._pending:
            if future.succeeded():
                acknowledged.append((frame_id, digest, captured))
                self._settled.append(Outcome(frame_id, digest))
            elif future.is_done:
                self._fail(frame_id, digest, *kafka_failure(future.exception, self.kafka))
            else:
                self._fail(frame_id, digest, f"Kafka did not answer within {self.kafka.delivery_bound_s:g} s")
        self.ledger.add(acknowledged)
        self.summary.sent += len(acknowledged)
        settled, self._settled, self._pending = self._settled, [], []
        return settled

    def close(self) -> None:
        self.flush()
        if self.producer is not None:
            self.producer.close()

    def send_all(self, frames: Iterable[Frame | Exception], total: int | None = None,
                 progress: bool = True) -> ProduceSummary:
        """Send every frame; a source error (bad file) or a frame Kafka refused counts as failed and the rest
        go on."""
        try:
            for item in _progress(frames, total, enabled=progress):
                if isinstance(item, Exception):
                    self.summary.failed += 1
                    self.summary.failures.append(str(item))
                    continue
                self.send(item)
        finally:
            self.close()
        return self.summary


def kafka_failure(exc: Exception, kafka, size: int | None = None) -> tuple[str, bool]:
    """Why Kafka did not take a frame, said for an operator, and whether sending it again fails the same
    way (a message over the size limit does; a broker that was away or a missing permission need not).
    `size` is the message's, given when the send itself failed (before anything reached the broker)."""
    from kafka.errors import (
        AuthorizationError,
        InvalidRecordError,
        KafkaTimeoutError,
        MessageSizeTooLargeError,
        RecordListTooLargeError,
    )

    what = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError | InvalidRecordError):
        bytes_ = f"{size:,} bytes, " if size is not None else ""
        return (f"Kafka refused it ({bytes_}over the topic's max.message.bytes or the producer's request "
                f"limit; {what})", True)
    if isinstance(exc, AuthorizationError):
        return f"Kafka refused it: may this login write to {kafka.frames_topic}? ({what})", False
    if isinstance(exc, KafkaTimeoutError) and size is not None:
        return (f"not sent: no metadata of the topic or no room to buffer it within "
                f"{kafka.env_setting('max_block_ms')} ms; is the broker away? ({what})", False)
    if isinstance(exc, KafkaTimeoutError):
        delivery = kafka.env_setting("delivery_timeout_ms")
        return f"Kafka did not acknowledge it within {delivery} ms ({what})", False
    return f"Kafka refused it ({what})", False


def _progress(items: Iterable, total: int | None, enabled: bool) -> Iterator:
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    with tqdm(items, total=total, unit="frame", file=sys.stderr, disable=None) as bar:
        yield from bar
