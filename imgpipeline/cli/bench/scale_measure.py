"""What `bench scale` measures: the topic's lag against the runs' ledgers, the machine's CPU, the
instance's ticks and runs, the followers' observations and the landing files.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from imgpipeline.cli.bench.scale_input import WARM_UP
from imgpipeline.lib.stats import percentile
from imgpipeline.resources.storage import Storage


@dataclass
class Watch:
    """The topic's end offsets against the ranges the runs accounted for (their ledgers)."""

    kafka: object
    store: Storage
    partitions: int
    ledgers: dict[str, dict] = field(default_factory=dict)  # key → ledger, with its partition
    warm_up: set[str] = field(default_factory=set)  # the warm-up's ledgers

    def __post_init__(self):
        from kafka import TopicPartition

        self.consumer = self.kafka.consumer(group_id=None)
        self.tps = [TopicPartition(self.kafka.frames_topic, p) for p in range(self.partitions)]

    def refresh(self) -> None:
        from imgpipeline.defs.records.ledger import ledger_prefix

        for partition in range(self.partitions):
            prefix = ledger_prefix(self.kafka.frames_topic, partition)
            for key in self.store.list(prefix):
                if key not in self.ledgers and key.endswith(".json") and "/" not in key[len(prefix):]:
                    self.ledgers[key] = {**json.loads(self.store.get(key)), "partition": partition}

    def lag(self) -> dict[int, int]:
        """Per partition: offsets on the topic no run has accounted for yet."""
        self.refresh()
        ends = {tp.partition: offset for tp, offset in self.consumer.end_offsets(self.tps).items()}
        accounted: dict[int, int] = defaultdict(int)
        for ledger in self.ledgers.values():
            accounted[ledger["partition"]] += ledger["end"] - ledger["start"]
        return {p: ends[p] - accounted[p] for p in ends}

    def measured(self) -> list[dict]:
        return [ledger for key, ledger in self.ledgers.items() if key not in self.warm_up]

    def landed(self) -> int:
        return sum(ledger["counts"]["read"] - ledger["counts"]["duplicate"] for ledger in self.measured())

    def close(self) -> None:
        self.consumer.close()


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat (Linux)."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def cpu_busy(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total > 0 else None


def instance_figures(instance, t0: float) -> dict:
    """What the instance recorded after `t0`: the sensor's ticks and every run."""
    import dagster as dg

    from imgpipeline.lib.dagster_door import InstigatorType, TickStatus

    since = datetime.fromtimestamp(t0, UTC)
    ticks = []
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == "frames_sensor":
            ticks += instance.get_ticks(state.instigator_origin_id, state.selector_id, after=t0)
    durations = sorted(t.end_timestamp - t.timestamp for t in ticks if t.end_timestamp)
    detect = []
    for record in instance.get_run_records(dg.RunsFilter(job_name="detect_frames", created_after=since)):
        created = record.create_timestamp.timestamp()
        # Launched: off the queue, handed to the launcher (which forks its process); then its op's first step.
        marks: dict[str, float] = {}
        for event in instance.get_records_for_run(record.dagster_run.run_id, of_type={
                dg.DagsterEventType.RUN_STARTING, dg.DagsterEventType.STEP_START}).records:
            marks.setdefault(event.event_log_entry.dagster_event_type.value, event.timestamp)
        detect.append({"run_id": record.dagster_run.run_id, "status": record.dagster_run.status.value,
                       "created": created, "started": record.start_time, "ended": record.end_time,
                       "launched": marks.get(dg.DagsterEventType.RUN_STARTING.value),
                       "step_start": marks.get(dg.DagsterEventType.STEP_START.value)})
    others = Counter(record.dagster_run.job_name
                     for record in instance.get_run_records(dg.RunsFilter(created_after=since))
                     if record.dagster_run.job_name != "detect_frames")
    warm_up = instance.get_runs_count(dg.RunsFilter(job_name="detect_frames", created_before=since))
    return {"tick_durations": durations, "ticks": len(ticks),
            "ticks_failed": sum(t.status == TickStatus.FAILURE for t in ticks),
            "runs": detect, "warm_up_runs": warm_up, "other_runs": dict(others)}


def follower_observations(instance, t0: float, input_end: float) -> list[dict]:
    """The follow_frames runs' observations of kafka_frames while the input lasted: each window's frames/s
    and latency from the broker to the range accounted for (landed p50, p95)."""
    import dagster as dg

    from imgpipeline.defs.tables import TOPIC_ASSET

    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=TOPIC_ASSET, after_timestamp=t0, before_timestamp=input_end),
        limit=10_000).records
    found = []
    for record in records:
        metadata = record.asset_observation.metadata if record.asset_observation else {}
        if "landed_p95_s" in metadata:
            found.append({"at": record.timestamp, "frames_per_s": metadata["frames_per_s"].value,
                          "landed_p50_s": metadata["landed_p50_s"].value,
                          "landed_p95_s": metadata["landed_p95_s"].value})
    return sorted(found, key=lambda o: o["at"])


def landing_figures(storage, warm_up_landing: list[str], input_end: float | None = None) -> dict:
    """Every landing file but the warm-up's: records, distinct frames, statuses, bytes, waits (from the
    send to the frame's detection; those sent before `input_end` apart)."""
    from imgpipeline.defs.records.reader import landing_keys, parse_records
    from imgpipeline.ingest.messages import parse_time

    store = storage.open()
    files, size, records, frames = [], 0, 0, set()
    statuses, per_hour, waits, during = Counter(), Counter(), [], []
    for key in landing_keys(store):
        if key in warm_up_landing:
            continue
        data = store.get(key)
        files.append(key)
        size += len(data)
        for record in parse_records(data):
            if record.source_id == WARM_UP:
                continue
            records += 1
            frames.add(record.identity)
            statuses[record.status] += 1
            per_hour[record.event_hour] += 1
            waited = parse_time(record.processed_at) - parse_time(record.ingested_at)
            waits.append(waited.total_seconds())
            if input_end is not None and parse_time(record.ingested_at).timestamp() <= input_end:
                during.append(waited.total_seconds())
    return {"files": files, "bytes": size, "records": records, "distinct": len(frames),
            "statuses": dict(statuses), "hours": sorted(per_hour), "per_hour": per_hour,
            "wait_p50_s": round(percentile(waits, 0.5), 2) if waits else None,
            "wait_p95_s": round(percentile(waits, 0.95), 2) if waits else None,
            "wait_max_s": round(max(waits), 2) if waits else None,
            "input_wait_p50_s": round(percentile(during, 0.5), 2) if during else None,
            "input_wait_p95_s": round(percentile(during, 0.95), 2) if during else None}
