"""The per-frame work of a detect_frames run: read a range, parse, fetch, decode, measure, detect.

Every message is untrusted input (docs/contracts.md): what is wrong with one frame becomes that
frame's `error` record and a dead-letter entry; the rest of the batch goes on.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

from imgpipeline.defs.partitions import CALENDAR, Calendar
from imgpipeline.defs.records.record import OUT_OF_RANGE, LandingRecord
from imgpipeline.defs.records.retired import is_retired, retired_key
from imgpipeline.ingest.messages import (
    BadInput,
    FrameMessage,
    annotated_key,
    frame_key,
    iso_utc,
    parse_message,
    sha256_hex,
    stand_in_source,
)
from imgpipeline.resources.storage import BadObject, Storage


@dataclass
class Incoming:
    """A message as read from Kafka (or built from a URI), not yet trusted."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list
    timestamp_ms: int | None
    shed: str | None = None  # why the frame is recorded without detection (overload), if it is
    generation: int = 0  # how many times the topic's offsets were reset: offsets are reused across them
    uri: str | None = None  # the explicit frame URI the message was built from, in a run over URIs


class RangeIncomplete(Exception):
    """Offsets of a run's range could not be read (broker or leader unavailable): the run fails and
    is retried, and nothing is landed or committed."""


def read_range(consumer, topic: str, partition: int, start: int, end: int, gaps: list[tuple[int, int]],
               idle_polls: int = 5, generation: int = 0) -> Iterator[Incoming]:
    """Exactly the records in [start, end), streamed: assign + seek + bounded polls.

    Every offset is accounted for: read, or deleted by retention before it was read (proved by the
    log's beginning offset; appended to `gaps` as [first, end)). Anything else that stops the read
    short raises RangeIncomplete. Offsets the consumer passes without a record (compaction,
    transaction markers) are not messages.
    """
    from kafka import TopicPartition
    from kafka.errors import OffsetOutOfRangeError

    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek(tp, skip_deleted(consumer, tp, start, end, gaps))
    idle = 0
    while consumer.position(tp) < end:
        try:
            batch = consumer.poll(timeout_ms=2000, max_records=100).get(tp, [])
        except OffsetOutOfRangeError:  # retention deleted the offsets ahead of us while we read
            consumer.seek(tp, skip_deleted(consumer, tp, consumer.position(tp), end, gaps))
            continue
        if not batch:
            idle += 1
            position = consumer.position(tp)
            if idle >= idle_polls:
                resumed = skip_deleted(consumer, tp, position, end, gaps)
                if resumed == position:
                    raise RangeIncomplete(
                        f"{topic}-{partition}: offsets {position}..{end - 1} could not be read after "
                        f"{idle} polls (the log ends at {consumer.end_offsets([tp])[tp]}); the run fails "
                        "and is retried rather than landing part of its range")
                consumer.seek(tp, resumed)
                idle = 0
            continue
        idle = 0
        for record in batch:
            if start <= record.offset < end:
                yield Incoming(topic, partition, record.offset, record.key, record.value,
                               list(record.headers or []), record.timestamp, generation=generation)
            if record.offset >= end - 1:
                return


def topic_id_of(consumer, topic: str) -> str | None:
    """The topic's id from the consumer's metadata (kafka-python 3 keeps it), else None."""
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    topic_id = cluster.topic_id(topic) if cluster is not None and hasattr(cluster, "topic_id") else None
    return str(topic_id) if topic_id else None


def skip_deleted(consumer, tp, position: int, end: int, gaps: list[tuple[int, int]]) -> int:
    """Where to read from: `position`, or the log's beginning when retention deleted offsets from
    `position` on (recorded in `gaps`)."""
    beginning = consumer.beginning_offsets([tp])[tp]
    if beginning <= position:
        return position
    gaps.append((position, min(beginning, end)))
    return min(beginning, end)


class Shedding:
    """Under overload, one frame in k per source is detected; the others are recorded as `shed`.

    A frame's wait is how long it has been on the topic: now − the broker's append time. Past
    `after_s`, k = ceil(wait / after_s): the further behind, the fewer frames detected, so the
    runs catch up and the wait settles near (overload factor) × after_s instead of growing.
    A source's first late frame is detected, then every k-th. 0 turns shedding off.
    """

    def __init__(self, after_s: float, clock=time.time):
        self.after_s = after_s
        self.clock = clock
        self.since_kept: dict[bytes | None, int] = {}  # per source (the message key)
        self.appended_ms: list[int] = []  # the broker's append times of the frames marked: the fast lane's

    def mark(self, incoming: Iterator[Incoming]) -> Iterator[Incoming]:
        for item in incoming:
            if item.timestamp_ms is not None:
                self.appended_ms.append(item.timestamp_ms)
                if self.after_s > 0:
                    item.shed = self.reason(item.key, self.clock() - item.timestamp_ms / 1000)
            yield item

    def take_appended(self) -> list[int]:
        """The append times marked since the last call (the follower's latency figures)."""
        taken, self.appended_ms = self.appended_ms, []
        return taken

    def reason(self, source: bytes | None, waited: float) -> str | None:
        if waited <= self.after_s:
            self.since_kept.pop(source, None)
            return None
        k = math.ceil(waited / self.after_s)
        since = self.since_kept.get(source)
        if since is None or since + 1 >= k:
            self.since_kept[source] = 0
            return None
        self.since_kept[source] = since + 1
        return (f"shed: waited {waited:.1f} s on the topic, over the bound of {self.after_s:g} s; "
                f"1 frame in {k} of this source detected")


@dataclass
class Prepared:
    """A message after parsing, fetching, decoding and measuring (done ahead in a thread)."""

    incoming: Incoming
    message: FrameMessage | None = None
    record: LandingRecord | None = None
    image: object = None
    size: int = 0
    error: str | None = None
    dead_lettered: bool = False
    inline: bytes | None = None  # an inline frame's bytes until they are stored


class FrameProcessor:
    """The per-frame work of a run; the detector is loaded once and reused."""

    def __init__(self, store: Storage, detector, *, run_id: str, dark_threshold: float,
                 annotate: bool, max_bytes: int, max_pixels: int | None = None,
                 calendar: Calendar = CALENDAR):
        self.store = store
        self.detector = detector
        self.run_id = run_id
        self.dark_threshold = dark_threshold
        self.annotate = annotate
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.calendar = calendar
        self.retired_days: dict[date, bool] = {}  # retention's marks as first looked at in this run

    def prepare(self, incoming: Incoming) -> Prepared:
        """Parse, fetch and decode; thread-safe, so it runs ahead of the detector."""
        from imgpipeline.vision.quality import UndecodableImage, decode_image, measure_quality

        prepared = Prepared(incoming)
        try:
            message, inline = parse_message(incoming.value, incoming.headers)
            prepared.message = message
            why = (self.calendar.out_of_range(message.captured, broker_time(incoming.timestamp_ms))
                   or self.of_a_retired_day(message.captured))
            if why is not None:
                return self.undetected(prepared, inline, OUT_OF_RANGE, why)
            if incoming.shed is not None:
                return self.undetected(prepared, inline, "shed", incoming.shed)
            if inline is not None:
                if len(inline) > self.max_bytes:
                    raise BadInput(f"inline frame is {len(inline)} bytes, over the limit of {self.max_bytes}")
                data = inline
            else:
                data = self.store.get(self.store.key_for(message.uri), max_bytes=self.max_bytes)
            if message.sha256 and sha256_hex(data) != message.sha256:
                raise BadInput("frame bytes do not match the message's sha256")
            prepared.inline = inline  # stored later, in offset order (store_inline)
            prepared.size = len(data)
            prepared.image = decode_image(data, self.max_pixels)
            quality = measure_quality(prepared.image)
            height, width = prepared.image.shape[:2]
            prepared.record = self.base_record(incoming, message, bytes=len(data),
                                               brightness=quality.brightness, contrast=quality.contrast,
                                               sharpness=quality.sharpness, width=width, height=height)
        except (BadInput, BadObject, UndecodableImage) as exc:
            prepared.error = str(exc)
            prepared.image = None
        except Exception as exc:
            if environment_failure(exc):
                raise  # the run fails and is retried; nothing is committed
            prepared.error = f"unexpected {type(exc).__name__}: {str(exc)[:300]}"
            prepared.image = None
        return prepared

    def of_a_retired_day(self, captured: datetime) -> str | None:
        """Why a frame's capture day takes no frame any more (None when it does): retention deleted that
        day's landing and keeps its tables as built, so a frame landed there would never reach a table (a
        camera clock a month behind). One look at the store per day and run."""
        day = captured.date()
        if day not in self.retired_days:
            self.retired_days[day] = is_retired(self.store, day)
        if not self.retired_days[day]:
            return None
        return (f"captured_at {captured.isoformat()} is of {day}, a day whose landing retention deleted "
                f"({retired_key(day)}): its tables are kept as built")

    def undetected(self, prepared: Prepared, inline: bytes | None, status: str, reason: str) -> Prepared:
        """A well-formed frame recorded with a status and its reason, neither fetched nor decoded: shed
        under overload, or captured out of range. An inline one is still stored, so
        its image is kept; running a shed frame's range again without shedding detects it."""
        if inline is None:
            self.store.key_for(prepared.message.uri)  # a URI outside the root is an error, shed or not
        else:
            if len(inline) > self.max_bytes:
                raise BadInput(f"inline frame is {len(inline)} bytes, over the limit of {self.max_bytes}")
            if prepared.message.sha256 and sha256_hex(inline) != prepared.message.sha256:
                raise BadInput("frame bytes do not match the message's sha256")
        prepared.inline = inline
        prepared.record = self.base_record(prepared.incoming, prepared.message, status=status, error=reason,
                                           bytes=len(inline) if inline is not None else None)
        return prepared

    def store_inline(self, prepared: Prepared) -> None:
        """Store an inline frame before it is detected, so every frame has a URI; called in offset
        order, so of two messages for one frame the first is the one stored. A stored frame is never
        replaced by different bytes: the same key with other content makes this frame an error."""
        message, data = prepared.message, prepared.inline
        prepared.inline = None
        key = frame_key(message.source_id, message.captured, message.frame_id)
        digest = sha256_hex(data)
        stored = self.store.put_new(key, data, sha256=digest)
        if stored not in (None, digest):
            prepared.error = (f"{key} already holds a different frame (sha256 {stored[:12]}…, this one "
                              f"{digest[:12]}…); a stored frame is never replaced")
            prepared.image = None
            return
        prepared.message = _with_uri(message, self.store.uri(key))
        prepared.record.uri = prepared.message.uri

    def base_record(self, incoming: Incoming, message: FrameMessage | None, **measured) -> LandingRecord:
        """The one place a landing record is made: the message's fields (or, unparseable, where it was
        read, the stand-in source of its key and when the broker took it), where it was read, the
        detector, and what was `measured`."""
        ingested = iso_utc(broker_time(incoming.timestamp_ms))
        if message is None:
            fields = {"schema": None, "frame_id": f"{incoming.topic}-{incoming.partition}-{incoming.offset}",
                      "source_id": stand_in_source(incoming.key), "captured_at": ingested}
        else:
            fields = json.loads(message.to_json())
        read = {"ingested_at": ingested, "run_id": self.run_id, "topic": incoming.topic,
                "partition": incoming.partition, "offset": incoming.offset}
        return LandingRecord(**fields | read | self.detector.identity.as_record() | measured)

    def finish(self, prepared: Prepared) -> LandingRecord:
        """Detect (unless dark or bad) and return the landing record; a frame that fails here becomes
        an error record like any other bad frame."""
        if prepared.error is None:
            try:
                record = self.detect(prepared)
            except Exception as exc:
                if environment_failure(exc):
                    raise
                prepared.error = f"detection failed: {type(exc).__name__}: {str(exc)[:300]}"
        if prepared.error is not None:
            record = self.base_record(prepared.incoming, prepared.message, status="error",
                                      error=prepared.error)
        prepared.image = None
        record.processed_at = iso_utc(datetime.now(UTC))
        return record

    def detect(self, prepared: Prepared) -> LandingRecord:
        from imgpipeline.vision.drawing import draw_detections
        from imgpipeline.vision.quality import encode_jpeg

        record = prepared.record
        if record.status in ("shed", OUT_OF_RANGE):
            return record
        if record.brightness < self.dark_threshold:
            record.status = "skipped_dark"
            return record
        found = self.detector.detect(prepared.image)
        record.status, record.object_count = "detected", len(found)
        record.detections = [d.as_record() for d in found]
        if self.annotate:
            message = prepared.message
            key = annotated_key(message.source_id, message.captured, message.frame_id)
            self.store.put(key, encode_jpeg(draw_detections(prepared.image, found)))
        return record


def broker_time(timestamp_ms: int | None) -> datetime:
    """The message's timestamp; a producer sets it, so one out of any calendar's range reads as now."""
    try:
        return datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)


def environment_failure(exc: BaseException) -> bool:
    """True for failures of the run's environment (storage or broker unreachable, disk full):
    they fail the run, which is retried. Anything else about one frame is that frame's error."""
    from botocore.exceptions import BotoCoreError, ClientError
    from kafka.errors import KafkaError

    # An S3 answer about one object (4xx) is a BadObject already; what is left is the service's.
    return isinstance(exc, (OSError, BotoCoreError, ClientError, KafkaError, MemoryError))


def _with_uri(message: FrameMessage, uri: str) -> FrameMessage:
    return replace(message, uri=uri)


def ahead(items: Iterator, work, workers: int, lookahead: int) -> Iterator:
    """work(item) for each item on `workers` threads, results in order, at most `lookahead` pending.

    The bound keeps a run's memory flat whatever its batch size: frames are streamed, not held.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=work.__name__) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= lookahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def uri_messages(uris: list[str], store: Storage) -> Iterator[Incoming]:
    """Explicit frame URIs as messages: source and date from the frames/ layout when present."""
    for index, uri in enumerate(uris):
        try:
            key = store.key_for(uri)
        except BadObject:
            key = ""
        parts = key.split("/")
        source = parts[1] if len(parts) == 4 and parts[0] == "frames" else "uris"
        frame_id = parts[-1].rsplit(".", 1)[0] if key else f"uri-{index}"
        captured = (
            f"{parts[2]}T00:00:00.000Z" if len(parts) == 4 and parts[0] == "frames"
            else iso_utc(datetime.now(UTC))
        )
        value = json.dumps({"schema": 1, "frame_id": frame_id, "source_id": source,
                            "captured_at": captured, "uri": uri}).encode()
        yield Incoming("uris", 0, index, source.encode(), value, [], None, uri=uri)
