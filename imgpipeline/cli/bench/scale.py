"""`imgpipeline bench scale`: many cameras through a real daemon, sensor and runs with the no-op
detector, so the figures are the orchestration's: sensor ticks, runs and their start-up, landing
files, lag and drain, the warehouse build; extrapolated to a day and a month, and the limit that
bends first.

The cameras are synthetic: one small JPEG stored once, and per source `fps` messages a second
referencing it by URI and sha256, each a distinct frame id, keyed by source (the producer's
partitioner spreads the sources over the partitions), each source at its own phase.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from imgpipeline.cli.bench.common import local_resources, scratch_dir, write_result
from imgpipeline.cli.bench.scale_figures import NOTICE, SAMPLE_S, figures
from imgpipeline.cli.bench.scale_input import WARM_UP, Frame, Sender, delete_topics, synthetic_jpeg
from imgpipeline.cli.bench.scale_measure import (
    Watch,
    cpu_busy,
    cpu_times,
    follower_observations,
    instance_figures,
    landing_figures,
)
from imgpipeline.cli.bench.scale_report import bends, print_scale
from imgpipeline.cli.bench.scale_warehouse import build_warehouse, screening_cost

LANES = ("batch", "fast")


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
    result["bends"] = bends(result)
    result["bends_first"] = result["bends"][0] if result["bends"] else None
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
