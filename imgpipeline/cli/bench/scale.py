"""`imgpipeline bench scale`: many cameras through a real daemon, sensor and runs with the no-op
detector, so the figures are the orchestration's: sensor ticks, runs and their start-up, landing
files, lag and drain, the warehouse build; extrapolated to a day and a month, and the limit that
bends first.

The cameras are synthetic: one small JPEG stored once, and per source `fps` messages a second
referencing it by URI and sha256, each a distinct frame id, keyed by source (the producer's
partitioner spreads the sources over the partitions), each source at its own phase.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from imgpipeline.cli.bench.common import local_resources, scratch_dir, write_result
from imgpipeline.cli.bench.scale_report import NOTICE, SAMPLE_S, figures, print_scale
from imgpipeline.lib.stats import percentile
from imgpipeline.resources.storage import Storage

WARM_UP = "warm-up"
LANES = ("batch", "fast")


def schedule(sources: int, fps: float, seconds: float, seed: int = 7):
    """(offset in s, source index, frame number) in time order: every source at `fps` frames a
    second from its own phase, as cameras started at different moments send."""
    rng = random.Random(seed)
    phases = sorted((rng.random() / fps, index) for index in range(sources))
    for number in range(max(1, round(fps * seconds))):
        for phase, index in phases:
            yield number / fps + phase, index, number


def synthetic_jpeg(width: int = 160, height: int = 120) -> bytes:
    """A small grey gradient: bright enough to be detected (not skipped as dark), cheap to decode."""
    import cv2
    import numpy as np

    row = np.linspace(60, 200, width).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", np.dstack([np.tile(row, (height, 1))] * 3),
                            [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return data.tobytes()


@dataclass
class Frame:
    """The one stored image every synthetic message references."""

    uri: str
    sha256: str
    width: int
    height: int


def source_names(sources: int) -> list[str]:
    width = len(str(sources - 1))
    return [f"cam-{index:0{width}d}" for index in range(sources)]


class Sender(threading.Thread):
    """Every source's frames at their scheduled times (as fast as it can when it falls behind)."""

    def __init__(self, kafka, frame: Frame, sources: int, fps: float, seconds: float):
        super().__init__(name="bench-scale-sender", daemon=True)
        self.kafka, self.frame = kafka, frame
        self.sources, self.fps, self.seconds = sources, fps, seconds
        self.sent = 0
        self.first: float | None = None
        self.last: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from imgpipeline.ingest.messages import FrameMessage, iso_utc

        names = source_names(self.sources)
        producer = self.kafka.producer(linger_ms=20)
        topic, frame = self.kafka.frames_topic, self.frame
        origin, started = time.time(), time.monotonic()
        try:
            for offset, index, number in schedule(self.sources, self.fps, self.seconds):
                delay = started + offset - time.monotonic()
                if delay > 0.002:
                    time.sleep(delay)
                source = names[index]
                message = FrameMessage(
                    frame_id=f"{source}-{number:06d}", source_id=source,
                    captured_at=iso_utc(datetime.fromtimestamp(origin + offset, UTC)),
                    uri=frame.uri, sha256=frame.sha256, width=frame.width, height=frame.height)
                producer.send(topic, key=source.encode(), value=message.to_json())
                self.last = time.time()
                self.first = self.first or self.last
                self.sent += 1
            producer.flush()
        except BaseException as error:  # said by the main thread
            self.error = error
        finally:
            producer.close()


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


def delete_topics(kafka) -> None:
    """The benchmark's frames topic and its DLQ: a fresh topic of many partitions each time adds up."""
    from kafka.errors import KafkaError

    from imgpipeline import ConfigError

    try:
        admin = kafka.admin()
        try:
            admin.delete_topics([kafka.frames_topic, kafka.dlq_topic])
        finally:
            admin.close()
    except (KafkaError, ConfigError) as error:
        print(f"(the topic {kafka.frames_topic} was not deleted: {error})")


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


def in_flight_cap(policy, partitions: int) -> tuple[int, str]:
    """How many detect_frames runs the sensor lets be queued or running at once, and its setting."""
    from imgpipeline.resources.settings import env_name

    per_partition = policy.runs_per_partition * partitions
    if policy.total_runs_in_flight < per_partition:
        return policy.total_runs_in_flight, env_name(type(policy), "total_runs_in_flight")
    return per_partition, env_name(type(policy), "runs_per_partition")


def bench_scale(sources: int = 1000, partitions: int = 12, fps: float = 1.0, seconds: float = 120.0,
                max_batch: int | None = None, *, resources: dict | None = None, folder: Path | None = None,
                drain_timeout_s: float | None = None, progress_s: float = 10.0, lane: str = "batch") -> dict:
    """`sources` cameras at `fps` each for `seconds` through the whole orchestration with the no-op
    detector, on a fresh topic of `partitions` partitions, a fresh local folder and a Dagster daemon of
    its own, by `lane` (batch: detect_frames runs per batch; fast: the follow_frames runs); then the
    warehouse of the hours covered, built in this process."""
    from imgpipeline import ConfigError
    from imgpipeline.resources import StorageResource

    if sources < 1 or partitions < 1 or fps <= 0 or seconds <= 0 or (max_batch is not None and max_batch < 1):
        raise ConfigError("bench scale: --sources, --partitions and --max-batch must be at least 1, "
                          "--fps and --seconds more than 0")
    if lane not in LANES:
        raise ConfigError(f"bench scale: --lane is one of {', '.join(LANES)}, not {lane!r}")
    banner = "!" * min(100, len(NOTICE))
    print(f"{banner}\n{NOTICE}\n{banner}")
    print(f"{sources:,} sources × {fps:g} frames/s for {seconds:g} s = {sources * fps:,.0f} frames/s asked, "
          f"{partitions} partitions, the {lane} lane")
    resources = resources or local_resources()
    folder = Path(folder) if folder else scratch_dir("scale")
    drain_timeout_s = drain_timeout_s if drain_timeout_s is not None else max(180.0, 1.5 * seconds)

    live = run_live(resources["kafka"], folder, sources, partitions, fps, seconds, max_batch,
                    drain_timeout_s, progress_s, lane)
    landing = landing_figures(live["storage"], live["warm_up_landing"], live["input_end"])
    empty = StorageResource(uri=(folder / "empty-store").as_uri())
    warehouse = build_warehouse(live["storage"], landing["hours"], live["dagster_home"], empty)
    screening = screening_cost(live["storage"], landing)
    result = figures(sources, partitions, fps, seconds, live, landing, warehouse, screening)
    print_scale(result)
    write_result("scale", result)
    return result


def run_live(kafka, folder: Path, sources: int, partitions: int, fps: float, seconds: float,
             max_batch: int | None, drain_timeout_s: float, progress_s: float, lane: str = "batch") -> dict:
    """Produce through a real Dagster daemon with the no-op engine forced on its processes; what the
    topic, the ledgers and the instance say."""
    from imgpipeline.defs.streaming.batch_policy import BatchPolicy
    from imgpipeline.ingest.messages import frame_key, sha256_hex
    from imgpipeline.lib.instance import InstanceSettings, open_instance
    from imgpipeline.paths import HOME_ENV
    from imgpipeline.resources import DetectorResource, KafkaResource, StorageResource
    from imgpipeline.resources.settings import env_name
    from imgpipeline.services import LocalServices

    kafka = KafkaResource(**{**kafka.model_dump(), "frames_topic": f"bench-scale-{uuid.uuid4().hex[:6]}"})
    kafka.ensure_topics(partitions=partitions)
    storage = StorageResource(uri=(folder / "store").as_uri())
    store = storage.open()
    data = synthetic_jpeg()
    key = frame_key("bench-scale", datetime.now(UTC), "frame")
    store.put_new(key, data, sha256=sha256_hex(data))
    frame = Frame(store.uri(key), sha256_hex(data), 160, 120)

    home = folder / "home"
    home.mkdir(parents=True, exist_ok=True)
    overrides = {
        HOME_ENV: str(home),
        env_name(KafkaResource, "bootstrap_servers"): kafka.bootstrap_servers,
        env_name(KafkaResource, "frames_topic"): kafka.frames_topic,
        env_name(StorageResource, "uri"): storage.uri,
        env_name(DetectorResource, "engine"): "noop",
        env_name(DetectorResource, "precision"): "default",
        # An instance of the benchmark's own (SQLite in its scratch folder), never the project's PostgreSQL.
        env_name(InstanceSettings, "kind"): "sqlite",
        # What it measures: detect_frames runs per batch, their queue and their cap; or the followers.
        env_name(BatchPolicy, "fast_lane"): str(int(lane == "fast")),
    }
    if max_batch is not None:
        overrides[env_name(BatchPolicy, "max_batch")] = str(max_batch)
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    local = LocalServices(home / ".imgpipeline")
    watch = Watch(kafka, store, partitions)
    try:
        policy = BatchPolicy.from_env()
        cap, cap_env = in_flight_cap(policy, partitions)
        if lane == "fast":
            print(f"policy: {min(policy.followers, partitions)} follow_frames run(s) share the {partitions} "
                  f"partitions ({env_name(BatchPolicy, 'followers')}), ranges of at most {policy.max_batch}")
        else:
            print(f"policy: at most {policy.max_batch} frames per run, partial batches after "
                  f"{policy.max_wait_s:g} s, {cap} runs in flight ({cap_env}), "
                  f"a tick every {policy.interval_s} s")
        print("starting the Dagster daemon (sensor, runs) with the no-op engine …")
        local.up_daemon()
        with open_instance(local.dagster.dagster_home) as instance:
            live = drive(instance, kafka, watch, frame, sources, fps, seconds, drain_timeout_s, progress_s)
            live.update(instance_figures(instance, live["t0"]))
            live["observed"] = follower_observations(instance, live["t0"], live["input_end"])
            queue = instance.get_concurrency_config().run_queue_config
            live["max_concurrent_runs"] = queue.max_concurrent_runs if queue else None
    finally:
        watch.close()
        local.dagster.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        delete_topics(kafka)
    live.update(lane=lane, policy=policy.model_dump(), in_flight_cap=cap, in_flight_env=cap_env,
                storage=storage,
                topic=kafka.frames_topic, dagster_home=local.dagster.dagster_home,
                ledgers=watch.measured(),
                warm_up_landing=sorted({k for key in watch.warm_up
                                        for k in watch.ledgers[key].get("landing", [])}))
    return live


def drive(instance, kafka, watch: Watch, frame: Frame, sources: int, fps: float, seconds: float,
          drain_timeout_s: float, progress_s: float) -> dict:
    """Warm up, send, and watch lag until the topic is drained (or the drain time is up)."""
    import dagster as dg

    from imgpipeline.ingest.messages import FrameMessage, iso_utc

    # One frame through the whole path first: the daemon, sensor, code server and fork server are
    # up when the measured frames arrive, as in steady operation.
    producer = kafka.producer()
    producer.send(kafka.frames_topic, key=WARM_UP.encode(), value=FrameMessage(
        frame_id=f"{WARM_UP}-0", source_id=WARM_UP, captured_at=iso_utc(datetime.now(UTC)), uri=frame.uri,
        sha256=frame.sha256, width=frame.width, height=frame.height).to_json())
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 180
    while sum(watch.lag().values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if sum(watch.lag().values()):
        raise SystemExit("the warm-up frame did not land within 180 s; see the daemon's log")
    watch.warm_up = set(watch.ledgers)

    t0 = time.time()
    since = datetime.fromtimestamp(t0, UTC)

    def runs() -> int:
        return instance.get_runs_count(dg.RunsFilter(job_name="detect_frames", created_after=since))

    sender = Sender(kafka, frame, sources, fps, seconds)
    cpu_start = cpu_times()
    sender.start()
    samples: list[tuple[float, int]] = []
    next_print = progress_s

    def sample(phase: str) -> dict[int, int]:
        nonlocal next_print
        lag = watch.lag()
        now = time.time() - t0
        samples.append((round(now, 1), sum(lag.values())))
        if now >= next_print:
            next_print += progress_s
            rate = sender.sent / max(1e-9, (sender.last or t0) - (sender.first or t0))
            print(f"  {now:>5.0f} s {phase:<9} sent {sender.sent:>9,} ({rate:,.0f}/s)  landed "
                  f"{watch.landed():>9,}  runs {runs():>5}  lag {sum(lag.values()):>8,}", flush=True)
        return lag

    while sender.is_alive():
        sender.join(SAMPLE_S)
        sample("sending")
    if sender.error is not None:
        raise sender.error
    input_end = time.time()
    cpu_input = cpu_times()
    lag_end = watch.lag()
    drain_deadline = time.monotonic() + drain_timeout_s
    lag = lag_end
    while sum(lag.values()) and time.monotonic() < drain_deadline:
        time.sleep(SAMPLE_S)
        lag = sample("draining")
    drained_at = time.time() if not sum(lag.values()) else None
    # The ledger is written before the run ends: wait for the runs to finish, for their end times.
    active = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED]
    quiet = time.monotonic() + 60
    while drained_at and time.monotonic() < quiet and instance.get_runs_count(
            dg.RunsFilter(job_name="detect_frames", statuses=active)):
        time.sleep(0.5)
    t_end = time.time()
    state = "drained" if drained_at else "stopped"
    print(f"  {t_end - t0:>5.0f} s {state:<9} sent {sender.sent:>9,}  landed "
          f"{watch.landed():>9,}  runs {runs():>5}  lag {sum(lag.values()):>8,}")
    return {
        "t0": t0, "t_end": t_end, "sent": sender.sent, "first_sent": sender.first, "last_sent": sender.last,
        "input_end": input_end, "lag_at_input_end": sum(lag_end.values()),
        "partition_lag_at_input_end": lag_end, "drained_at": drained_at,
        "lag_remaining": sum(lag.values()), "lag_samples": samples,
        "cpu_busy_input": cpu_busy(cpu_start, cpu_input), "cpu_busy_drain": cpu_busy(cpu_input, cpu_times()),
    }


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


def build_warehouse(storage, hours: list[datetime], dagster_home: Path, empty_store) -> dict:
    """The hourly `frames` and `detections` of the hours covered made whole, then `daily_summary` of their
    days, materialized in this process (one run each, as a backfill makes them), timed; the same over a
    store with no frames, before (warming up) and after, for the fixed cost of a build; and the fullest
    hour extended by its partitions' last ranges, as the automation extends the current hour."""
    import dagster as dg
    from dagster_duckdb import DuckDBResource

    from imgpipeline.defs.hours import hour_key
    from imgpipeline.defs.warehouse.assets import WHOLE, daily_summary, hourly_tables
    from imgpipeline.lib.instance import open_instance
    from imgpipeline.resources import TrackingResource

    if not hours:
        return {"hours": 0, "days": 0, "hourly_s": 0.0, "daily_s": 0.0, "empty_hourly_s": 0.0,
                "empty_daily_s": 0.0, "parquet_files": 0, "hourly_files": 0, "daily_files": 0,
                "extension": None}
    days = sorted({h.strftime("%Y-%m-%d") for h in hours})
    print(f"warehouse: {len(hours)} hourly partition(s) ({hour_key(hours[0])} … {hour_key(hours[-1])}) and "
          f"{len(days)} day(s) of daily_summary, in this process …")
    tracking, duckdb = TrackingResource.from_env(), DuckDBResource(database=":memory:")

    def build(instance, store: Storage, assets, first: str, last: str, whole: bool = True) -> tuple[float,
              dict]:
        started = time.perf_counter()
        result = dg.materialize(
            [assets], instance=instance, resources={"storage": store, "tracking": tracking, "duckdb": duckdb},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last,
                  **({WHOLE: "1"} if whole else {})})
        if not result.success:
            raise SystemExit(f"the warehouse build of {first} … {last} failed")
        metadata = result.get_asset_materialization_events()[0].materialization.metadata
        return round(time.perf_counter() - started, 2), {k: v.value for k, v in metadata.items()}

    hourly = (hourly_tables, hour_key(hours[0]), hour_key(hours[-1]))
    daily = (daily_summary, days[0], days[-1])
    with open_instance(dagster_home) as instance:
        build(instance, empty_store, *hourly)
        build(instance, empty_store, *daily)
        timings = {"hourly_s": build(instance, storage, *hourly)[0],
                   "daily_s": build(instance, storage, *daily)[0],
                   "empty_hourly_s": build(instance, empty_store, *hourly)[0],
                   "empty_daily_s": build(instance, empty_store, *daily)[0]}
        fullest = max(hours, key=lambda h: landed_in(storage, h))
        timings["extension"] = extend_hour(storage, fullest, lambda whole: build(
            instance, storage, hourly_tables, hour_key(fullest), hour_key(fullest), whole))
    keys = [k for k in storage.open().list("warehouse/") if k.endswith(".parquet")]
    hourly_files = [k for k in keys if k.split("/")[1] in ("frames", "detections", "class_hours")]
    daily_files = [k for k in keys if k.split("/")[1] == "daily_summary"]
    return {"hours": len(hours), "days": len(days), **timings, "hourly_files": len(hourly_files),
            "daily_files": len(daily_files), "parquet_files": len(hourly_files) + len(daily_files)}


def landed_in(storage, hour: datetime) -> int:
    from imgpipeline.defs.records.reader import landing_keys

    return len(landing_keys(storage.open(), hour))


def extend_hour(storage, hour: datetime, build) -> dict:
    """An hour made whole without its partitions' last landing files, then extended by them (timed), as
    the automation adds a run's ranges to the current hour; and what reading and writing the hour's
    stored tables costs a frame (an extension's part that grows with the hour)."""
    from imgpipeline.defs.records.keys import ranges_of
    from imgpipeline.defs.records.reader import landing_keys, parse_records
    from imgpipeline.defs.tables import DETECTIONS, FRAMES, to_parquet

    store = storage.open()
    last = [files[-1][2] for files in ranges_of(landing_keys(store, hour)).values()]
    held = {key: store.get(key) for key in last}
    store.delete_many(list(held))
    try:
        build(True)
    finally:
        for key, data in held.items():
            store.put(key, data)
    seconds, metadata = build(False)
    started = time.perf_counter()
    stored = 0
    for table in (FRAMES, DETECTIONS):
        rows = table.read(store, table.hour_key(hour))
        stored += rows.num_rows if table is FRAMES else 0
        to_parquet(rows)
    merge_s = time.perf_counter() - started
    new = sum(1 for data in held.values() for _ in parse_records(data))
    return {"extend_s": seconds, "extended": metadata.get("hours_extended") == 1, "files": len(held),
            "new_frames": new, "stored_frames": stored, "merge_s_per_frame": merge_s / max(1, stored)}


def screening_cost(storage, landing: dict) -> dict:
    """What a run pays to screen duplicates: it reads the frame ids already landed in its hour by its
    partition's ranges within the window (Screening.window). Timed here over the whole
    fullest hour, per record read."""
    from imgpipeline.defs.streaming.detect_frames import Screening
    from imgpipeline.defs.streaming.landing import landed_frames

    window = Screening.from_env().window
    if not landing["hours"]:
        return {"hour_records": 0, "read_s": 0.0, "s_per_record": 0.0, "window": window}
    hour = max(landing["hours"], key=lambda h: landing["per_hour"][h])
    store = storage.open()
    started = time.perf_counter()
    seen = landed_frames(store, hour, "")
    elapsed = time.perf_counter() - started
    return {"hour_records": len(seen), "read_s": round(elapsed, 3),
            "s_per_record": elapsed / len(seen) if seen else 0.0, "window": window}
