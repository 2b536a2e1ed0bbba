"""detect_frames: read an exact Kafka offset range, detect objects, land per-frame metadata.

One run handles many frames and loads the model once. Bad input goes to the dead-letter
topic with a reason and lands as a record with status `error`; the batch goes on.
Landing files are named after the range, so re-running a range rewrites the same files,
and a frame already processed in its event-time hour by a neighbouring range of its partition (within
IMGPIPELINE_DUPLICATE_WINDOW offsets) is not landed again (its offset is a duplicate in the range
ledger); one landed only as an error is processed when it comes again.
"""


import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import dagster as dg
from pydantic import Field

from imgpipeline.defs.hours import hour_key
from imgpipeline.defs.records.keys import landing_key, range_name, uris_name
from imgpipeline.defs.records.ledger import (
    Ledger,
    contiguous_end,
    fold_ledger,
    read_ledger,
    record_range,
    spans,
)
from imgpipeline.defs.records.listeners import LandedRange, tell
from imgpipeline.defs.records.reader import parse_records
from imgpipeline.defs.records.record import OUT_OF_RANGE, LandingRecord
from imgpipeline.defs.records.runs import DETECT_JOB
from imgpipeline.defs.streaming.dead_letters import dead_letter
from imgpipeline.defs.streaming.landing import Landed, Neighbours, Spool, latest_times, record_sources
from imgpipeline.defs.streaming.processing import (
    FrameProcessor,
    Incoming,
    Prepared,
    Shedding,
    ahead,
    read_range,
    uri_messages,
)
from imgpipeline.defs.tables import LANDING_ASSET
from imgpipeline.resources import DetectorResource, KafkaResource, StorageResource
from imgpipeline.resources.settings import FromEnv, setting
from imgpipeline.resources.storage import Storage
from imgpipeline.vision.quality import DARK_THRESHOLD

PARTITION_TAG = "imgpipeline/kafka-partition"


class Screening(FromEnv, dg.ConfigurableResource):
    """How far back a run looks for frames already processed in their hour."""

    window: int = setting(
        "IMGPIPELINE_DUPLICATE_WINDOW", 100_000,
        "offsets of its partition before a run's range whose landing the run screens its frames against: a "
        "frame sent again within them is a duplicate, not landed again; one sent again later lands again "
        "and the warehouse keeps one row of it (0: every landing file of the hour, read by every run)",
        ge=0)

    def near(self, topic: str, partition: int, generation: int, start: int) -> Neighbours | None:
        """The ranges a run over [start, …) of a partition screens against; None: all (no window)."""
        return Neighbours(topic, partition, generation, start, self.window) if self.window else None


class DetectFramesConfig(dg.Config):
    """Which frames to process: a Kafka offset range (end exclusive) or explicit frame URIs."""

    topic: str = Field(default="", description="Kafka topic; empty means the configured frames topic.")
    partition: int = 0
    start_offset: int = Field(default=0, description="First offset of the range.")
    end_offset: int = Field(default=0, description="One past the last offset (exclusive).")
    uris: list[str] = Field(default=[], description="Frame URIs to process instead of a range.")
    dark_threshold: float = Field(
        default=DARK_THRESHOLD, description="Frames darker than this mean brightness (0-255) skip detection."
    )
    annotate: bool = Field(default=False, description="Also write annotated/<source>/<date>/<id>.jpg.")
    shed_after_s: float = Field(
        default=0.0, ge=0,
        description="Under overload: frames that waited on the topic longer than this are detected one "
                    "in k per source (k = wait / this, rounded up) and the rest recorded as `shed`. "
                    "0 detects every frame.")
    commit: bool = Field(default=True, description="Commit the range to the consumer group after success.")
    generation: int = Field(
        default=0, description="How many times the topic's offsets were reset (re-created topic): "
                               "names the landing files of a range so reused offsets never collide.")


def detect_run_config(topic: str, partition: int, start: int, end: int, generation: int = 0,
                      shed_after_s: float = 0.0) -> dict:
    """The run config of detect_frames over the offsets [start, end) of one partition."""
    config = {"topic": topic, "partition": partition, "start_offset": start, "end_offset": end}
    if generation:
        config["generation"] = generation
    if shed_after_s:
        config["shed_after_s"] = shed_after_s
    return {"ops": {"detect": {"config": config}}}


# Seconds between a run's progress lines: each is an event in the instance, a write a line.
PROGRESS_S = 5.0


class Batch:
    """A run's frames on their way to landing: dead letters, duplicates, detection, spools per hour."""

    def __init__(self, context: dg.OpExecutionContext, kafka: KafkaResource, store: Storage,
                 processor: FrameProcessor, name: str, near: Neighbours | None = None,
                 landed: Landed | None = None):
        self.context, self.kafka, self.store = context, kafka, store
        self.processor, self.name, self.near = processor, name, near
        self.counts = {"read": 0, "detected": 0, "skipped_dark": 0, "error": 0, "shed": 0,
                       OUT_OF_RANGE: 0, "duplicate": 0, "dlq": 0}
        self.duplicates: list[int] = []  # offsets of messages for frames already processed
        self.spools: dict[datetime, Spool] = {}
        self.latest: dict[str, dict] = {}  # per source: the latest capture, ingest and processing times
        # Per event hour, the frames processed there (read from landing); a run of many ranges passes one.
        self.landed = Landed() if landed is None else landed
        self.producer = None
        self.letters: list = []  # the DLQ sends' futures, confirmed before anything lands
        self.progress_at = time.monotonic() + PROGRESS_S

    def process(self, incoming: Iterator[Incoming]) -> None:
        """Every frame in offset order: screened, detected by the pool, spooled by event hour."""
        workers = self.processor.detector.size
        for prepared, record in ahead(self.screened(incoming), self.detect, workers=workers,
                                      lookahead=2 * workers):
            if record.status == "error":
                # Failed in detection, after the cheap checks: the frame is processed when it comes again.
                self.seen(record).discard(record.identity)
                if not prepared.dead_lettered:
                    self.dead_letter(prepared)
            self.counts[record.status] += 1
            latest_times(self.latest, record)
            hour = record.event_hour
            (self.spools.get(hour) or self.spools.setdefault(hour, Spool())).add(record)
        self.confirm_dead_letters()

    def screened(self, incoming: Iterator[Incoming]) -> Iterator[tuple[Prepared, LandingRecord]]:
        """Frames after the cheap checks: bad input to the DLQ, duplicates out."""
        # Parse, fetch and decode the next frames while the detectors work.
        for prepared in ahead(incoming, self.processor.prepare, workers=2, lookahead=8):
            self.counts["read"] += 1
            if prepared.error is not None:
                record = self.processor.finish(prepared)  # error records are cheap to finish
                self.dead_letter(prepared)
            else:
                record = prepared.record
            if self.is_duplicate(record):
                self.counts["duplicate"] += 1
                self.duplicates.append(prepared.incoming.offset)
                continue
            if prepared.inline is not None and prepared.error is None:
                self.processor.store_inline(prepared)
                if prepared.error is not None:
                    record = self.processor.finish(prepared)
                    self.dead_letter(prepared)
            if record.processed:
                self.seen(record).add(record.identity)
            yield prepared, record
            if time.monotonic() >= self.progress_at:
                self.progress_at = time.monotonic() + PROGRESS_S
                self.context.log.info(f"{self.counts['read']} frames read: {self.counts}")

    def dead_letter(self, prepared: Prepared) -> None:
        # A DLQ that cannot be reached fails the run within 15 s instead of blocking for a minute.
        self.producer = self.producer or self.kafka.producer(max_block_ms=15_000)
        key, letter = dead_letter(prepared.incoming, prepared.error, self.context.run_id)
        self.letters.append(self.producer.send(self.kafka.dlq_topic, key=key, value=letter))
        prepared.dead_lettered = True
        self.counts["dlq"] += 1
        self.context.log.warning(f"offset {prepared.incoming.offset}: {prepared.error} (sent to DLQ)")

    def confirm_dead_letters(self) -> None:
        """Wait until the broker has every dead letter (acks=all): one that failed fails the run, and
        nothing lands or is committed."""
        if self.producer is None:
            return
        self.producer.flush(timeout=60)
        for letter in self.letters:
            letter.get(timeout=30)  # raises the send's error

    def is_duplicate(self, record: LandingRecord) -> bool:
        """True when the frame was processed in its hour already (by another range or earlier here):
        errors never block the frame they were about."""
        return record.identity in self.seen(record)

    def seen(self, record: LandingRecord) -> set[tuple]:
        """The frames processed in the record's hour (by the neighbouring ranges, and by this run)."""
        return self.landed.of(self.store, record.event_hour, self.name, self.near)

    def drop_landed_meanwhile(self) -> None:
        """The frames another range landed while this run detected them (two runs of a partition side by
        side after a takeover, each holding a copy): duplicates, not landed twice. What is left is the
        moment both land at once."""
        for hour, spool in list(self.spools.items()):
            landed = self.landed.since(self.store, hour, self.name, self.near) & spool.frames
            dropped = spool.drop(landed) if landed else []
            for record in dropped:
                self.counts[record.status] -= 1
                self.counts["duplicate"] += 1
                self.duplicates.append(record.offset)
            if dropped:
                offsets = spans([record.offset for record in dropped])
                self.context.log.info(f"{len(dropped)} frames of {hour_key(hour)} landed by another range "
                                      f"while this one detected them: duplicates (offsets {offsets})")
            if not spool.records:  # nothing of the hour left to land
                spool.close()
                del self.spools[hour]

    def detect(self, item: tuple[Prepared, LandingRecord]) -> tuple[Prepared, LandingRecord]:
        prepared, record = item
        return prepared, record if prepared.error is not None else self.processor.finish(prepared)

    def land(self) -> list[str]:
        """One landing file per event-time hour, each reported as a landing_metadata materialization."""
        written = []
        for hour, spool in sorted(self.spools.items()):
            key = landing_key(hour, self.name)
            uri = spool.land(self.store, key)
            written.append(key)
            self.landed.wrote(key)
            self.context.log_event(dg.AssetMaterialization(
                asset_key=LANDING_ASSET,
                partition=hour_key(hour),
                description=f"{spool.records} frame records from {self.name}",
                metadata={"path": dg.MetadataValue.path(uri), "records": spool.records},
            ))
        return written

    def landed_records(self) -> Iterator[LandingRecord]:
        """The records spooled to land, read back in event-hour order."""
        for _, spool in sorted(self.spools.items()):
            spool.file.seek(0)
            yield from parse_records(spool.file.read())

    def land_sources(self, wrote: dict[str, dict] | None = None) -> list[str]:
        return record_sources(self.store, self.latest, wrote)

    def close(self) -> None:
        for spool in self.spools.values():
            spool.close()
        if self.producer is not None:
            self.producer.close()


@dataclass
class Lane:
    """What detects a run's ranges: the store, the detectors, the consumer reading the topic, and what
    the run wrote of its sources' times (record_sources)."""

    context: dg.OpExecutionContext
    kafka: KafkaResource
    store: Storage
    processor: FrameProcessor
    consumer: object
    topic: str
    sources: dict[str, dict] = field(default_factory=dict)


class HandedOn(Exception):
    """The group did not confirm the range's partition as the run's once its frames were processed (it went
    to another run, or the group could not answer): nothing of it landed."""


def detect_range(lane: Lane, partition: int, start: int, end: int, generation: int = 0, *,
                 shedding: Shedding | None = None, commit: bool = True, near: Neighbours | None = None,
                 landed: dict | None = None, live: bool = False,
                 held: Callable[[], bool] | None = None) -> tuple[dict, list[str]]:
    """Detect the offsets [start, end) of a partition and account for them: a landing file per event hour,
    the sources' latest times, the listeners told (`live`: the fast lane, whose ranges of a partition come
    one after the other), the range's ledger entry, the group's commit, the ledger's fold. Returns the
    range's counts and the keys it wrote. `held`, asked once the frames are processed and before anything
    lands: False raises HandedOn (a follower's partition given to another meanwhile)."""
    topic, store = lane.topic, lane.store
    gaps: list[tuple[int, int]] = []  # filled by read_range as it reads
    incoming = read_range(lane.consumer, topic, partition, start, end, gaps, generation=generation)
    batch = Batch(lane.context, lane.kafka, store, lane.processor,
                  range_name(topic, partition, start, end, generation), near, landed)
    try:
        batch.process((shedding or Shedding(0)).mark(incoming))
        batch.drop_landed_meanwhile()
        if held is not None and not held():
            raise HandedOn(f"partition {partition} went to another run (or the group could not say) while "
                           f"[{start}, {end}) was detected")
        records = list(batch.landed_records()) if live else []  # before landing: an upload closes them
        written = batch.land()
        batch.land_sources(lane.sources)
        if live:
            tell(LandedRange(lane.context, lane.kafka, store, topic, partition, start, end, generation,
                             lambda: iter(records), lane.processor.max_bytes))
        if gaps:
            batch.counts["deleted_by_retention"] = sum(stop - first for first, stop in gaps)
            lane.context.log.warning(f"offsets deleted by retention before they were read: {gaps}")
        ledger = record_range(store, topic, partition, start, end, generation, run_id=lane.context.run_id,
                              counts=batch.counts, gaps=gaps, duplicates=batch.duplicates, landing=written)
        written.append(ledger)
        accounted = read_ledger(store, topic, partition, generation)
        if commit:
            commit_accounted(lane.consumer, accounted, topic, partition, generation)
        try:  # housekeeping after the commit: a fold that fails is done by a later run
            fold_ledger(store, topic, partition, generation, ledger=accounted)
        except OSError as exc:
            lane.context.log.warning(f"the range ledger of partition {partition} was not folded: {exc}")
    finally:
        batch.close()
    return batch.counts, written


def detect_uris(context: dg.OpExecutionContext, kafka: KafkaResource, store: Storage,
                processor: FrameProcessor,
                uris: list[str]) -> tuple[dict, list[str]]:
    """Detect frames named by URI: landed like a range's, with no ledger or commit (no camera's offsets)."""
    batch = Batch(context, kafka, store, processor, uris_name(uris))
    try:
        batch.process(iter(uri_messages(uris, store)))
        return batch.counts, batch.land()
    finally:
        batch.close()


def frame_processor(context: dg.OpExecutionContext, store: Storage, storage: StorageResource,
                    detector: DetectorResource, dark_threshold: float = DARK_THRESHOLD,
                    annotate: bool = False) -> FrameProcessor:
    return FrameProcessor(
        store, detector.load_pool(), run_id=context.run_id, dark_threshold=dark_threshold,
        annotate=annotate, max_bytes=storage.max_frame_bytes, max_pixels=detector.max_pixels,
    )


@dg.op(name="detect", tags={"kind": "opencv"})
def detect_op(
    context: dg.OpExecutionContext,
    config: DetectFramesConfig,
    kafka: KafkaResource,
    storage: StorageResource,
    detector: DetectorResource,
    screening: Screening,
) -> dg.Output[dict]:
    """Detect objects in a range of frames and land one metadata file per event-time hour."""
    topic = config.topic or kafka.frames_topic
    store = storage.open()
    processor = frame_processor(context, store, storage, detector, config.dark_threshold, config.annotate)
    if config.uris:
        counts, written = detect_uris(context, kafka, store, processor, config.uris)
    elif config.end_offset <= config.start_offset:
        raise dg.Failure(
            f"empty range: end_offset {config.end_offset} <= start_offset {config.start_offset} "
            "(end_offset is exclusive)"
        )
    else:
        # "none": an offset below the log's start is an error we account for, never a silent jump.
        consumer = kafka.consumer(auto_offset_reset="none")
        partition, start, generation = config.partition, config.start_offset, config.generation
        try:
            counts, written = detect_range(
                Lane(context, kafka, store, processor, consumer, topic), partition, start, config.end_offset,
                generation, shedding=Shedding(config.shed_after_s), commit=config.commit,
                near=screening.near(topic, partition, generation, start))
        finally:
            consumer.close()
    context.log.info(f"done: {counts}; landing files: {len(written)}")
    return dg.Output(
        {"counts": counts, "landing": written},
        metadata={**{k: dg.MetadataValue.int(v) for k, v in counts.items()},
                  # bounded by the range's size whatever the lag: frames are streamed, not held
                  "peak_rss_mb": dg.MetadataValue.float(peak_rss_mb())},
    )


def peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def commit_accounted(consumer, ledger: Ledger, topic: str, partition: int, generation: int = 0) -> int | None:
    """Move the group's committed offset as far as the partition's accounted ranges (its ledger as read)
    reach without a hole, never backwards: a range that failed holds the commit at its start, so lag
    tools show it. The commit's metadata names the generation (`g<N>`): one of another generation (the
    topic re-created) is not where this one is."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    tp = TopicPartition(topic, partition)
    committed = of_generation(consumer.committed(tp, metadata=True), generation)
    base = committed if committed is not None else consumer.beginning_offsets([tp])[tp]
    reach = contiguous_end(([ledger.folded] if ledger.folded else []) + ledger.live_ranges, base)
    if reach > base:
        consumer.commit({tp: OffsetAndMetadata(reach, f"g{generation}", -1)})
        return reach
    return committed


def of_generation(committed, generation: int) -> int | None:
    """A committed offset (with its metadata) if committed in `generation`, else None. A commit naming no
    generation (made before commits named theirs) is taken for generation 0's."""
    if committed is None:
        return None
    said = committed.metadata or ("g0" if not generation else "")
    return committed.offset if said == f"g{generation}" else None


@dg.job(
    name=DETECT_JOB,
    executor_def=dg.in_process_executor,
    description="Object detection over a Kafka offset range (or frame URIs); lands per-frame metadata.",
)
def detect_frames():
    detect_op()
