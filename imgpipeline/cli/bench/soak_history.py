"""The history `bench soak` writes: days of a site's state at the layout real runs write, a day at a time.

An hour of history holds what real runs, the warehouse and compaction leave of it (docs/performance.md):

- per partition, the hour's one compacted landing file, named after the span of offsets a partition
  takes an hour at `fps` frames/s; its records a sample of `hour_frames` of them in all, over `sources`
  cameras (a box on each frame of one camera in ten);
- the hour's `frames` and `detections` tables and its build record, made by the warehouse's own code from
  that landing (tracked, stamped, checked), as the automation leaves them;
- in Dagster's instance, `hour_runs` detect_frames run records (finished, with the tags and run config the
  sensor gives, without their event logs) for the days the purge has not reached, and one materialization
  of `landing_metadata`, `frames` and `detections` for the hour. The run records name a topic of their own
  (`<topic>.history`): made-up offsets under the live topic's name would be holes to the coverage check.

A day also holds `images` frames a camera under `frames/` and `annotated/` (one small JPEG's bytes),
the daily report, `daily_summary` materialized, each camera's producer ledger and MQTT journal day files,
and per partition the range ledger's archive of the day's runs (the folded entries nothing reads
again; a partition's live entries and mark are the live runs' own, as Kafka's offsets cannot be made up).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from imgpipeline.resources.storage import Storage

HOUR_S = 3600


@dataclass(frozen=True)
class Shape:
    """What a history of `days` days ending yesterday holds."""

    days: int = 32
    fps: float = 1000.0
    partitions: int = 12
    sources: int = 1000
    hour_frames: int = 1200
    hour_runs: int = 1000
    images: int = 1

    def hour_offsets(self) -> int:
        """Offsets a partition takes in an hour at `fps`."""
        return max(1, round(self.fps * HOUR_S / self.partitions))

    def sentence(self) -> str:
        return (f"{self.days} days at the layout of {self.fps:,.0f} frames/s over {self.partitions} "
                f"partitions and {self.sources:,} cameras: {self.hour_frames:,} landing records an hour (a "
                f"sample of {self.fps * HOUR_S:,.0f}), {self.hour_runs:,} detect_frames runs an hour")


def source_of(index: int, width: int) -> str:
    return f"cam-{index:0{width}d}"


class History:
    """Writes days of history into the store, the instance and the state folder."""

    def __init__(self, store: Storage, instance, topic: str, shape: Shape, state: Path, image: tuple[str,
                 str, bytes]):
        from imgpipeline.resources import TrackingResource

        self.store, self.instance, self.topic, self.shape, self.state = store, instance, topic, shape, state
        self.uri, self.sha256, self.jpeg = image
        self.width = len(str(shape.sources - 1))
        self.settings = TrackingResource(zones_file="none").settings()

    def day(self, day: date, with_runs: bool) -> None:
        """Every hour of the day, then what is kept by day."""
        for hour in range(24):
            start = datetime.combine(day, time(hour), UTC)
            self.hour(start)
            if with_runs:
                self.runs(start)
        self.day_files(day)
        self.materialized("daily_summary", day.isoformat())

    def offsets(self, start: datetime) -> int:
        """The first offset of a partition's hour: offsets run on from the first day of the history."""
        first = datetime.combine(date(2000, 1, 1), time(), UTC)
        return int((start - first).total_seconds() // HOUR_S) * self.shape.hour_offsets()

    def records(self, start: datetime, count: int, until: datetime) -> dict[int, list]:
        """`count` landing records captured from the hour's start until `until`, per partition, in
        offset order."""
        from imgpipeline.defs.records.record import LandingRecord
        from imgpipeline.ingest.messages import SCHEMA_VERSION, iso_utc

        shape, base = self.shape, self.offsets(start)
        per_partition: dict[int, list] = {p: [] for p in range(shape.partitions)}
        step = (until - start).total_seconds() / count
        for n in range(count):
            index = n % shape.sources
            partition = index % shape.partitions
            captured = start + timedelta(seconds=n * step)
            boxes = [{"class_id": 0, "class_name": "person", "confidence": 0.8,
                      "box": [10 + n % 100, 20, 30, 60]}] if index % 10 == 0 else []
            frame_id = f"h{start:%Y%m%d%H}-{n:07d}"
            offset = base + len(per_partition[partition]) * shape.hour_offsets() * shape.partitions // count
            per_partition[partition].append(LandingRecord(
                schema=SCHEMA_VERSION, frame_id=frame_id, source_id=source_of(index, self.width),
                captured_at=iso_utc(captured), uri=self.uri, sha256=self.sha256, width=160, height=120,
                content_type="image/jpeg", status="detected",
                ingested_at=iso_utc(captured + timedelta(seconds=1)),
                processed_at=iso_utc(captured + timedelta(seconds=3)), run_id="history", topic=self.topic,
                partition=partition, offset=offset, bytes=len(self.jpeg), brightness=120.0, contrast=40.0,
                sharpness=100.0, model="yolov4-tiny", engine="noop", precision="none",
                object_count=len(boxes), detections=boxes))
        return per_partition

    def hour(self, start: datetime, count: int | None = None, until: datetime | None = None) -> None:
        """The hour's compacted landing (`hour_frames` records, or `count` captured until `until`), then
        its tables and build record as the warehouse makes them."""
        from imgpipeline.defs.hours import hour_key
        from imgpipeline.defs.records.keys import landing_key, range_name
        from imgpipeline.defs.records.reader import landing_versions
        from imgpipeline.defs.tables import LANDING_ASSET
        from imgpipeline.defs.warehouse import builds

        base, span = self.offsets(start), self.shape.hour_offsets()
        every = []
        records_of = self.records(start, count or self.shape.hour_frames, until or start + timedelta(hours=1))
        for partition, records in records_of.items():
            if not records:
                continue
            name = range_name(self.topic, partition, base, base + span)
            self.store.put(landing_key(start, name), b"".join(r.to_json() + b"\n" for r in records))
            every.extend(records)
        self.materialized(LANDING_ASSET, hour_key(start))
        made = builds.whole(self.store, start, landing_versions(self.store, start), every, self.settings,
                            "history")
        builds.write_tables(self.store, start, made)
        for table in builds.HOURLY:
            self.materialized(table.key, hour_key(start))
        made.build.checked(True).write(self.store, start)

    def materialized(self, key, partition: str) -> None:
        import dagster as dg

        key = key if isinstance(key, dg.AssetKey) else dg.AssetKey(key)
        self.instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition))

    def runs(self, start: datetime) -> None:
        """The hour's detect_frames run records, finished, with their tags and run config; in one
        transaction, in Dagster's own run tables with the columns its `add_run` fills (and the hour's
        create, update, start and end times)."""
        import dagster as dg

        from imgpipeline.defs.streaming.detect_frames import PARTITION_TAG, detect_frames, detect_run_config
        from imgpipeline.lib.dagster_door import RunsTable, RunTagsTable, serialize_value

        storage = self.instance.run_storage
        count, base, topic = self.shape.hour_runs, self.offsets(start), f"{self.topic}.history"
        size = max(1, self.shape.hour_offsets() * self.shape.partitions // max(1, count))
        rows, tags = [], []
        for n in range(count):
            partition = n % self.shape.partitions
            first = base + (n // self.shape.partitions) * size
            run = dg.DagsterRun(job_name=detect_frames.name, run_id=str(uuid.uuid4()),
                                run_config=detect_run_config(topic, partition, first, first + size),
                                tags={PARTITION_TAG: f"{topic}-{partition}"},
                                status=dg.DagsterRunStatus.SUCCESS)
            at = start + timedelta(seconds=n * HOUR_S / count)
            rows.append({"run_id": run.run_id, "pipeline_name": run.job_name, "status": run.status.value,
                         "run_body": serialize_value(run), "create_timestamp": at,
                         "update_timestamp": at + timedelta(seconds=5), "start_time": at.timestamp() + 1,
                         "end_time": at.timestamp() + 5})
            tags += [{"run_id": run.run_id, "key": k, "value": v} for k, v in run.tags_for_storage().items()]
        with storage.connect() as conn:
            conn.execute(RunsTable.insert(), rows)
            conn.execute(RunTagsTable.insert(), tags)

    def day_files(self, day: date) -> None:
        """What is kept by day: frames and annotated copies, the report, ledgers and journals, the
        folded range ledger."""
        from imgpipeline.defs.records.ledger import KEEP_LIVE, archive_key
        from imgpipeline.ingest.messages import annotated_key, frame_key
        from imgpipeline.web.render import report_key

        moment = datetime.combine(day, time(12), UTC)
        producers = self.state / "producers" / self.topic
        for index in range(self.shape.sources):
            source = source_of(index, self.width)
            ids = [f"d{day:%Y%m%d}-{source}-{k}" for k in range(self.shape.images)]
            for frame_id in ids:
                self.store.put(frame_key(source, moment, frame_id), self.jpeg)
                self.store.put(annotated_key(source, moment, frame_id), self.jpeg)
            sent = [f"{frame_id} {self.sha256}" for frame_id in ids]
            for suffix, lines in ((".sent.days", sent), (".captured.days",
                                                         [f"{i} {day}T12:00:00.000Z" for i in ids])):
                folder = producers / f"{source}{suffix}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / day.isoformat()).write_text("".join(f"{line}\n" for line in lines))
        self.store.put(report_key(day), f"<html><body>report of {day}</body></html>".encode())
        runs = self.shape.hour_runs * 24 // self.shape.partitions
        base = self.offsets(datetime.combine(day, time(), UTC))
        size = max(1, 24 * self.shape.hour_offsets() // max(1, runs))
        for partition in range(self.shape.partitions):
            for first in range(0, runs, KEEP_LIVE):
                entries = [json.dumps({"start": base + k * size, "end": base + (k + 1) * size})
                           for k in range(first, min(runs, first + KEEP_LIVE))]
                low, high = base + first * size, base + (first + len(entries)) * size
                self.store.put(archive_key(self.topic, partition, 0, low, high, day),
                               "".join(f"{e}\n" for e in entries).encode())
