"""The per-frame work of a detect_frames run: read a range, parse, fetch, decode, measure, detect.

Every message is untrusted input (docs/contracts.md): what is wrong with one frame becomes that
frame's `error` record and a dead-letter entry; the rest of the batch goes on.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from imgpipeline.ingest.messages import BadInput, FrameMessage, frame_key, iso_utc, parse_message, sha256_hex
from imgpipeline.resources.storage import BadObject


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


def read_range(consumer, topic: str, partition: int, start: int, end: int,
               idle_polls: int = 3) -> Iterator[Incoming]:
    """Exactly the records in [start, end), streamed: assign + seek + bounded polls."""
    from kafka import TopicPartition

    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek(tp, start)
    idle = 0
    while consumer.position(tp) < end:
        batch = consumer.poll(timeout_ms=2000, max_records=100).get(tp, [])
        if not batch:
            idle += 1
            if idle >= idle_polls:
                # Offsets deleted by retention or compaction: nothing more to read.
                break
            continue
        idle = 0
        for record in batch:
            if start <= record.offset < end:
                yield Incoming(topic, partition, record.offset, record.key, record.value,
                               list(record.headers or []), record.timestamp)
            if record.offset >= end - 1:
                return


@dataclass
class Prepared:
    """A message after parsing, fetching, decoding and measuring (done ahead in a thread)."""

    incoming: Incoming
    message: FrameMessage | None = None
    record: dict | None = None
    image: object = None
    size: int = 0
    error: str | None = None


class FrameProcessor:
    """The per-frame work of a run; the detector is loaded once and reused."""

    def __init__(self, store, detector, *, run_id: str, dark_threshold: float,
                 annotate: bool, max_bytes: int):
        self.store = store
        self.detector = detector
        self.run_id = run_id
        self.dark_threshold = dark_threshold
        self.annotate = annotate
        self.max_bytes = max_bytes

    def prepare(self, incoming: Incoming) -> Prepared:
        """Parse, fetch and decode; thread-safe, so it runs ahead of the detector."""
        from imgpipeline.vision.quality import UndecodableImage, decode_image, measure_quality

        prepared = Prepared(incoming)
        try:
            message, inline = parse_message(incoming.value, incoming.headers)
            prepared.message = message
            if inline is not None:
                if len(inline) > self.max_bytes:
                    raise BadInput(f"inline frame is {len(inline)} bytes, over the limit of {self.max_bytes}")
                data = inline
            else:
                data = self.store.get(self.store.key_for(message.uri), max_bytes=self.max_bytes)
            if message.sha256 and sha256_hex(data) != message.sha256:
                raise BadInput("frame bytes do not match the message's sha256")
            if inline is not None:
                # Store inline frames before processing, so every frame has a URI.
                key = frame_key(message.source_id, message.captured, message.frame_id)
                self.store.put(key, data, sha256=message.sha256)
                prepared.message = message = _with_uri(message, self.store.uri(key))
            prepared.size = len(data)
            prepared.image = decode_image(data)
            quality = measure_quality(prepared.image)
            prepared.record = self.base_record(incoming, message) | {
                "bytes": len(data),
                "brightness": quality.brightness,
                "contrast": quality.contrast,
                "sharpness": quality.sharpness,
            }
            height, width = prepared.image.shape[:2]
            prepared.record.update(width=width, height=height)
        except (BadInput, BadObject, UndecodableImage) as exc:
            prepared.error = str(exc)
            prepared.image = None
        return prepared

    def base_record(self, incoming: Incoming, message: FrameMessage | None) -> dict:
        ingested = (
            iso_utc(datetime.fromtimestamp(incoming.timestamp_ms / 1000, UTC))
            if incoming.timestamp_ms is not None else iso_utc(datetime.now(UTC))
        )
        if message is None:
            # Unparseable: identify it by where it was read, date it by the broker.
            fields = {"schema": None, "frame_id": f"{incoming.topic}-{incoming.partition}-{incoming.offset}",
                      "source_id": _text(incoming.key), "captured_at": ingested, "uri": None,
                      "sha256": None, "width": None, "height": None, "content_type": None}
        else:
            fields = json.loads(message.to_json())
        return fields | {
            "status": None, "error": None, "ingested_at": ingested, "processed_at": None,
            "run_id": self.run_id, "topic": incoming.topic, "partition": incoming.partition,
            "offset": incoming.offset, "bytes": None, "brightness": None, "contrast": None,
            "sharpness": None, "model": self.detector.name, "object_count": 0, "detections": [],
        }

    def finish(self, prepared: Prepared) -> dict:
        """Detect (unless dark or bad) and return the landing record."""
        from imgpipeline.vision.drawing import draw_detections
        from imgpipeline.vision.quality import encode_jpeg

        if prepared.error is not None:
            record = self.base_record(prepared.incoming, prepared.message)
            record.update(status="error", error=prepared.error)
        else:
            record = prepared.record
            if record["brightness"] < self.dark_threshold:
                record["status"] = "skipped_dark"
            else:
                found = self.detector.detect(prepared.image)
                record.update(
                    status="detected",
                    object_count=len(found),
                    detections=[d.as_record() for d in found],
                )
                if self.annotate:
                    message = prepared.message
                    key = f"annotated/{message.source_id}/{message.captured.date()}/{message.frame_id}.jpg"
                    self.store.put(key, encode_jpeg(draw_detections(prepared.image, found)))
        record["processed_at"] = iso_utc(datetime.now(UTC))
        return record


def _with_uri(message: FrameMessage, uri: str) -> FrameMessage:
    return replace(message, uri=uri)


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode()


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


def dead_letter(incoming: Incoming, reason: str, run_id: str) -> bytes:
    """The DLQ message: where the original came from, why it failed, and the original value."""
    value = incoming.value or b""
    return json.dumps({
        "reason": reason,
        "topic": incoming.topic,
        "partition": incoming.partition,
        "offset": incoming.offset,
        "key": _text(incoming.key),
        "headers": {k: _text(v) for k, v in incoming.headers},
        "run_id": run_id,
        "failed_at": iso_utc(datetime.now(UTC)),
        "value_bytes": len(value),
        "value_base64": base64.b64encode(value).decode() if len(value) <= 1 << 20 else None,
    }).encode()


def uri_messages(uris: list[str], store) -> Iterator[Incoming]:
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
        yield Incoming("uris", 0, index, source.encode(), value, [], None)
