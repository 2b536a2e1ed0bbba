"""detect_frames: read an exact Kafka offset range, detect objects, land per-frame metadata.

One run handles many frames and loads the model once. Bad input goes to the dead-letter
topic with a reason and lands as a record with status `error`; the batch goes on.
Landing files are named after the range, so re-running a range rewrites the same files,
and a frame already landed in its event-time hour by another range is not landed again.
"""


import base64
import hashlib
import json
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from imgpipeline.ingest.messages import BadInput, FrameMessage, frame_key, iso_utc, parse_message
from imgpipeline.partitions import hour_key, hour_path
from imgpipeline.resources import DetectorResource, KafkaResource, StorageResource
from imgpipeline.resources.storage import BadObject, sha256_hex

LANDING = "landing/metadata"
LANDING_ASSET = dg.AssetKey("landing_metadata")
PARTITION_TAG = "imgpipeline/kafka-partition"


class DetectFramesConfig(dg.Config):
    """Which frames to process: a Kafka offset range (end exclusive) or explicit frame URIs."""

    topic: str = Field(default="", description="Kafka topic; empty means the configured frames topic.")
    partition: int = 0
    start_offset: int = Field(default=0, description="First offset of the range.")
    end_offset: int = Field(default=0, description="One past the last offset (exclusive).")
    uris: list[str] = Field(default=[], description="Frame URIs to process instead of a range.")
    dark_threshold: float = Field(
        default=20.0, description="Frames darker than this mean brightness (0-255) skip detection."
    )
    annotate: bool = Field(default=False, description="Also write annotated/<source>/<date>/<id>.jpg.")
    commit: bool = Field(default=True, description="Commit the range to the consumer group after success.")


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
    from dataclasses import replace

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


class Spool:
    """One hour's landing records on local disk until the run writes them: memory stays flat."""

    def __init__(self):
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the op when it ends)
        self.sha256 = hashlib.sha256()
        self.records = 0

    def add(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        self.file.write(line)
        self.sha256.update(line)
        self.records += 1


def landing_key(hour: datetime, name: str) -> str:
    return f"{LANDING}/{hour_path(hour)}/{name}.jsonl"


def landed_frame_ids(store, hour: datetime, except_name: str) -> set[str]:
    """frame_ids already landed in an event-time hour by other ranges."""
    ids: set[str] = set()
    own = landing_key(hour, except_name)
    for key in store.list(f"{LANDING}/{hour_path(hour)}/"):
        if key == own or not key.endswith(".jsonl"):
            continue
        for line in store.get(key).splitlines():
            if line.strip():
                ids.add(json.loads(line)["frame_id"])
    return ids


def event_hour(record: dict) -> datetime:
    moment = datetime.fromisoformat(record["captured_at"].replace("Z", "+00:00"))
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dg.op(name="detect", tags={"kind": "opencv"})
def detect_op(
    context: dg.OpExecutionContext,
    config: DetectFramesConfig,
    kafka: KafkaResource,
    storage: StorageResource,
    detector: DetectorResource,
) -> dg.Output[dict]:
    """Detect objects in a range of frames and land one metadata file per event-time hour."""
    topic = config.topic or kafka.frames_topic
    store = storage.open()
    processor = FrameProcessor(
        store, detector.load_pool(), run_id=context.run_id, dark_threshold=config.dark_threshold,
        annotate=config.annotate, max_bytes=storage.max_frame_bytes,
    )
    if config.uris:
        name = f"uris-{sha256_hex(json.dumps(sorted(config.uris)).encode())[:16]}"
        incoming = iter(_uri_messages(config.uris, store))
        consumer = None
    else:
        if config.end_offset <= config.start_offset:
            raise dg.Failure(
                f"empty range: end_offset {config.end_offset} <= start_offset {config.start_offset} "
                "(end_offset is exclusive)"
            )
        name = f"{topic}-{config.partition}-{config.start_offset}-{config.end_offset}"
        consumer = kafka.consumer()
        incoming = read_range(consumer, topic, config.partition, config.start_offset, config.end_offset)

    producer = None
    by_hour: dict[datetime, Spool] = {}
    landed: dict[datetime, set[str]] = {}
    counts = {"read": 0, "detected": 0, "skipped_dark": 0, "error": 0, "duplicate": 0, "dlq": 0}

    def screened() -> Iterator[tuple[Prepared, dict]]:
        """Frames in offset order after the cheap checks: bad input to the DLQ, duplicates out."""
        nonlocal producer
        # Parse, fetch and decode the next frames while the detectors work.
        for prepared in ahead(incoming, processor.prepare, workers=2, lookahead=8):
            counts["read"] += 1
            # Error records are cheap to finish; good frames are checked before detection.
            record = processor.finish(prepared) if prepared.error is not None else prepared.record
            if prepared.error is not None:
                producer = producer or kafka.producer()
                producer.send(kafka.dlq_topic, key=prepared.incoming.key,
                              value=dead_letter(prepared.incoming, prepared.error, context.run_id))
                counts["dlq"] += 1
                context.log.warning(f"offset {prepared.incoming.offset}: {prepared.error} (sent to DLQ)")
            hour = event_hour(record)
            seen = landed.setdefault(hour, landed_frame_ids(store, hour, name))
            if record["frame_id"] in seen:
                counts["duplicate"] += 1
                continue
            seen.add(record["frame_id"])
            yield prepared, record
            if counts["read"] % 100 == 0:
                context.log.info(f"{counts['read']} frames read: {counts}")

    def detect(item: tuple[Prepared, dict]) -> dict:
        prepared, record = item
        return record if prepared.error is not None else processor.finish(prepared)

    try:
        workers = processor.detector.size
        for record in ahead(screened(), detect, workers=workers, lookahead=2 * workers):
            counts[record["status"]] += 1
            hour = event_hour(record)
            (by_hour.get(hour) or by_hour.setdefault(hour, Spool())).add(record)
        if producer is not None:
            producer.flush()

        written = []
        for hour, spool in sorted(by_hour.items()):
            key = landing_key(hour, name)
            spool.file.seek(0)
            store.put_file(key, spool.file, sha256=spool.sha256.hexdigest())
            written.append(key)
            context.log_event(dg.AssetMaterialization(
                asset_key=LANDING_ASSET,
                partition=hour_key(hour),
                description=f"{spool.records} frame records from {name}",
                metadata={"path": dg.MetadataValue.path(store.uri(key)), "records": spool.records},
            ))
        if consumer is not None and config.commit:
            commit_range(consumer, topic, config.partition, config.end_offset)
    finally:
        for spool in by_hour.values():
            spool.file.close()
        if consumer is not None:
            consumer.close()
        if producer is not None:
            producer.close()
    context.log.info(f"done: {counts}; landing files: {len(written)}")
    return dg.Output(
        {"counts": counts, "landing": written},
        metadata={k: dg.MetadataValue.int(v) for k, v in counts.items()},
    )


def _uri_messages(uris: list[str], store) -> Iterator[Incoming]:
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


def commit_range(consumer, topic: str, partition: int, end_offset: int) -> None:
    """Move the group's committed offset to end_offset, never backwards (replays)."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    tp = TopicPartition(topic, partition)
    committed = consumer.committed(tp)
    if committed is None or committed < end_offset:
        consumer.commit({tp: OffsetAndMetadata(end_offset, "", -1)})


@dg.job(
    name="detect_frames",
    executor_def=dg.in_process_executor,
    description="Object detection over a Kafka offset range (or frame URIs); lands per-frame metadata.",
)
def detect_frames():
    detect_op()
