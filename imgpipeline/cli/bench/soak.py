"""`imgpipeline bench soak`: a month of a site's history written at the layout real runs write, and the
pipeline's recurring work timed over it at its first day and at its last.

The history (soak_history.py) is written a day at a time into a fresh local folder, Dagster instance
(SQLite) and state folder. At "day 1" it holds yesterday only (a first round of the work, not counted,
warms the process up); then the days before it are written, retention's sweep and the purge of run
records run as their schedules would today, and the same work is timed again at "day N". The work is
the real code's, in this process, on a fresh topic of the local Kafka broker: the frames sensor's tick,
detect_frames runs (the no-op engine) over live frames (in an hour that holds `hour_base` frames before
them, as an hour under way does), the current hour's tables extended by them, the
warehouse's automation evaluated, the coverage check, `imgpipeline status`, a day page of the viewer
(cold: its views made), `imgpipeline query --day`'s start-up, a daily summary, and producers' and the
MQTT bridge's start (their ledgers and journals). Each figure is the median of `repeat` measurements
(the automation's of 9 evaluations after each);
it prints each at both points and their ratio, the store's and the instance's size, and what retention
and the purge removed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import statistics
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from imgpipeline.cli.bench.common import local_resources, scratch_dir, write_result
from imgpipeline.cli.bench.soak_history import History, Shape, source_of

# Dagster's own events of the runs made here: warnings only.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# A cost at the last day more than this many times its first day's grows with history.
LIMIT = 1.2
# Cameras whose ledger and journal a start reads.
STARTED = 50
# What is timed, in the order printed.
COSTS = {
    "sensor_tick_s": "frames_sensor tick",
    "run_s": "detect_frames run",
    "extend_s": "current hour extended",
    "automation_s": "warehouse automation evaluated",
    "coverage_s": "coverage check",
    "status_s": "imgpipeline status",
    "day_page_s": "viewer day page, cold",
    "query_start_s": "imgpipeline query --day start-up",
    "daily_summary_s": "daily summary of a day",
    "producer_start_s": f"{STARTED} producers' ledgers opened",
    "bridge_start_s": f"MQTT journals of {STARTED} cameras read",
}


def timed(action, repeat: int = 1) -> float:
    """The median of `repeat` timings of `action()`."""
    spent = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        spent.append(time.perf_counter() - started)
    return statistics.median(spent)


class Soak:
    """The fresh folder, instance, topic and environment of one soak, and the work it times."""

    def __init__(self, kafka, folder: Path, shape: Shape, live_frames: int, repeat: int, hour_base: int):
        from imgpipeline.lib.instance import InstanceSettings
        from imgpipeline.paths import HOME_ENV
        from imgpipeline.resources import DetectorResource, KafkaResource, StorageResource
        from imgpipeline.resources.settings import env_name

        self.shape, self.live_frames, self.repeat, self.hour_base = shape, live_frames, repeat, hour_base
        topic = f"bench-soak-{uuid.uuid4().hex[:6]}"
        self.kafka = KafkaResource(**{**kafka.model_dump(), "frames_topic": topic})
        self.storage = StorageResource(uri=(folder / "store").as_uri())
        self.folder, self.home = folder, folder / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {HOME_ENV: str(self.home),
                    env_name(KafkaResource, "bootstrap_servers"): kafka.bootstrap_servers,
                    env_name(KafkaResource, "frames_topic"): topic,
                    env_name(StorageResource, "uri"): self.storage.uri,
                    env_name(DetectorResource, "engine"): "noop",
                    env_name(DetectorResource, "precision"): "default",
                    # An instance of the benchmark's own (SQLite in its folder), never the project's.
                    env_name(InstanceSettings, "kind"): "sqlite"}
        self.cursor: str | None = None
        self.evaluation = None
        self.hour: datetime | None = None
        self.sent = 0

    @contextlib.contextmanager
    def environment(self):
        saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def capture_time(self) -> datetime:
        """Now, or the last moment of the measured hour once the clock has passed it: a measurement's live
        frames all go to the hour it extends."""
        now = datetime.now(UTC)
        return now if self.hour is None else min(now, self.hour + timedelta(hours=1, milliseconds=-1))

    def send(self, frames: int) -> None:
        """`frames` live frames, captured now, over the cameras (each its own key)."""
        from imgpipeline.ingest.messages import FrameMessage, iso_utc

        producer = self.kafka.producer()
        try:
            width = len(str(self.shape.sources - 1))
            for n in range(frames):
                source = source_of((self.sent + n) % self.shape.sources, width)
                message = FrameMessage(frame_id=f"live-{self.sent + n:08d}", source_id=source,
                                       captured_at=iso_utc(self.capture_time()), uri=self.image[0],
                                       sha256=self.image[1], width=160, height=120)
                producer.send(self.kafka.frames_topic, key=source.encode(), value=message.to_json())
            producer.flush()
        finally:
            producer.close()
        self.sent += frames

    def tick(self, sensor) -> list:
        """One frames_sensor evaluation from the last cursor; its run requests (the cursor kept)."""
        import dagster as dg

        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                          resources={"kafka": self.kafka})
        result = sensor(context)
        self.cursor = getattr(result, "cursor", None) or self.cursor
        return getattr(result, "run_requests", None) or []

    def drain(self) -> list[float]:
        """Ticks and every run they ask for until nothing is pending; each run's time."""
        from imgpipeline.defs.streaming.detect_frames import Screening, detect_frames
        from imgpipeline.resources import DetectorResource

        resources = {"kafka": self.kafka, "storage": self.storage, "detector": DetectorResource.from_env(),
                     "screening": Screening.from_env()}
        spent = []
        for _ in range(100):
            requests = self.tick(self.sensor)
            if not requests:
                return spent
            for request in requests:
                started = time.perf_counter()
                outcome = detect_frames.execute_in_process(
                    run_config={**request.run_config, **QUIET}, instance=self.instance, resources=resources,
                    tags=request.tags, raise_on_error=False)
                spent.append(time.perf_counter() - started)
                if not outcome.success:
                    raise SystemExit(f"bench soak: the detect_frames run {request.run_key} failed")
        raise SystemExit("bench soak: frames still pending after 100 ticks")

    def build_hour(self, hour: datetime) -> float:
        """The hour's tables extended by its new landing files, as the warehouse automation asks."""
        import dagster as dg

        from imgpipeline.defs.hours import hour_key
        from imgpipeline.defs.warehouse.assets import hourly_tables
        from imgpipeline.resources import TrackingResource

        started = time.perf_counter()
        result = dg.materialize([hourly_tables], instance=self.instance, partition_key=hour_key(hour),
                                resources={"storage": self.storage, "tracking": TrackingResource.from_env()},
                                run_config=QUIET, raise_on_error=False)
        if not result.success:
            raise SystemExit(f"bench soak: the build of {hour_key(hour)} failed")
        return time.perf_counter() - started

    def automation(self, times: int = 1) -> float:
        """The warehouse's automation evaluated after the runs since the last evaluation: the median of
        `times` evaluations of that same work (each from the last evaluation's cursor; one evaluation
        writes nothing), so the figure of a tenth of a second is steady."""
        import dagster as dg

        from imgpipeline.defs.streaming.assets import kafka_frames, landing_metadata
        from imgpipeline.defs.warehouse.assets import hourly_tables
        from imgpipeline.resources import TrackingResource

        defs = dg.Definitions(assets=[kafka_frames, landing_metadata, hourly_tables],
                              resources={"storage": self.storage, "tracking": TrackingResource.from_env()})
        cursor = self.evaluation.cursor if self.evaluation is not None else None
        spent = []
        for _ in range(times):
            started = time.perf_counter()
            evaluation = dg.evaluate_automation_conditions(defs=defs, instance=self.instance, cursor=cursor)
            spent.append(time.perf_counter() - started)
        self.evaluation = evaluation
        return statistics.median(spent)

    def status(self) -> None:
        from argparse import Namespace

        from imgpipeline.cli.status import status

        with contextlib.redirect_stdout(io.StringIO()):
            status(Namespace(minutes=15.0, json=True))

    def day_page(self, day: date) -> float:
        import urllib.request

        from imgpipeline.cli.serve import Running, Warehouse
        from imgpipeline.resources import AlertsResource, TrackingResource
        from imgpipeline.web.app import create_app

        running = Running(create_app(Warehouse(self.storage, TrackingResource(zones_file="none"),
                                               AlertsResource(alerts_file="none"), refresh_s=3600)))
        try:
            started = time.perf_counter()
            with urllib.request.urlopen(f"{running.url}/?date={day}", timeout=600) as response:
                response.read()
                if response.status != 200:
                    raise SystemExit(f"bench soak: the day page of {day} answered {response.status}")
            return time.perf_counter() - started
        finally:
            running.stop()

    def query_start(self, day: date) -> None:
        from imgpipeline.cli.query import warehouse

        con = warehouse([day.isoformat()])
        con.execute("SELECT count(*) FROM frames WHERE dt = ?", [day]).fetchall()
        con.close()

    def daily_summary(self, day: date) -> None:
        import dagster as dg
        from dagster_duckdb import DuckDBResource

        from imgpipeline.defs.warehouse.assets import daily_summary

        resources = {"storage": self.storage, "duckdb": DuckDBResource(database=":memory:")}
        result = dg.materialize([daily_summary], instance=self.instance, partition_key=day.isoformat(),
                                resources=resources,
                                run_config=QUIET, raise_on_error=False)
        if not result.success:
            raise SystemExit(f"bench soak: the daily summary of {day} failed")

    def started(self) -> list[str]:
        width = len(str(self.shape.sources - 1))
        return [source_of(index, width) for index in range(min(STARTED, self.shape.sources))]

    def producer_start(self, day: date) -> None:
        """STARTED cameras' producers started: each ledger asked about a frame of today and of `day`."""
        from imgpipeline.ingest.producer import ledger_for

        for source in self.started():
            ledger = ledger_for(self.kafka.frames_topic, source)
            for moment in (datetime.now(UTC), datetime.combine(day, datetime.min.time(), UTC)):
                ledger.has("x", self.image[1], moment)

    def bridge_start(self) -> None:
        """The MQTT bridge's journals of STARTED cameras read, as at its start."""
        from imgpipeline.ingest.mqtt import Journal
        from imgpipeline.ingest.producer import ledger_for
        from imgpipeline.resources.mqtt import MqttSettings

        days = MqttSettings.from_env().journal_days
        for source in self.started():
            path = ledger_for(self.kafka.frames_topic, source).path.with_suffix(".captured")
            Journal(path, days=days)._read_window(datetime.now(UTC))

    def measure(self, label: str, yesterday: date) -> dict:
        """Every cost at this point of the history."""
        from imgpipeline.defs.streaming.reconcile import coverage
        from imgpipeline.defs.tables import FRAMES

        print(f"{label}: timing the recurring work …")
        now = datetime.now(UTC)
        hour = now.replace(minute=0, second=0, microsecond=0)
        if hour != self.hour:  # the live frames' hour already holds frames, as an hour under way does
            until = max(hour + timedelta(seconds=1), now - timedelta(seconds=30))
            self.history.hour(hour, self.hour_base, until=until)
            self.hour = hour
        # An evaluation takes in what changed since the last: the sensor evaluates every 30 s, so it never
        # meets a month of history at once. One evaluation first (its warning of many updated partitions
        # hushed), as the sensor's last tick before the work would have been.
        hushed = logging.getLogger("dagster")
        level = hushed.level
        hushed.setLevel(logging.ERROR)
        try:
            self.automation()
        finally:
            hushed.setLevel(level)
        per_round = max(1, self.live_frames // self.repeat)
        self.send(per_round)
        runs = self.drain()
        extend, automation = [], []
        often = 3 * self.repeat  # the costs of milliseconds: more measurements for a steady median
        for _ in range(self.repeat):
            self.send(per_round)
            runs += self.drain()
            automation.append(self.automation(often))
            extend.append(self.build_hour(hour))
        store = self.storage.open()
        costs = {
            "sensor_tick_s": timed(lambda: self.tick(self.sensor), often),
            "run_s": statistics.median(runs),
            "extend_s": statistics.median(extend),
            "automation_s": statistics.median(automation),
            "coverage_s": timed(lambda: coverage(store, self.kafka, self.instance), often),
            "status_s": timed(self.status, self.repeat),
            "day_page_s": statistics.median(self.day_page(yesterday) for _ in range(self.repeat)),
            "query_start_s": timed(lambda: self.query_start(yesterday), often),
            "daily_summary_s": timed(lambda: self.daily_summary(yesterday), self.repeat),
            "producer_start_s": timed(lambda: self.producer_start(yesterday), often),
            "bridge_start_s": timed(self.bridge_start, often),
        }
        hour_frames = FRAMES.read(store, FRAMES.hour_key(hour)).num_rows
        return {"costs": costs, "runs": len(runs), "live_frames": self.sent, "hour_frames": hour_frames,
                **self.sizes()}

    def sizes(self) -> dict:
        import dagster as dg

        from imgpipeline.defs.streaming.detect_frames import detect_frames

        store_files = [p for p in (self.folder / "store").rglob("*") if p.is_file()]
        instance_dir = self.home / ".imgpipeline" / "dagster"
        return {"store_objects": len(store_files), "store_bytes": sum(p.stat().st_size for p in store_files),
                "instance_bytes": sum(p.stat().st_size for p in instance_dir.rglob("*") if p.is_file()),
                "detect_runs": self.instance.get_runs_count(dg.RunsFilter(job_name=detect_frames.name))}


def bench_soak(days: int = 32, fps: float = 1000.0, partitions: int = 12, sources: int = 1000,
               hour_frames: int = 1200, hour_runs: int = 1000, live_frames: int = 3000, repeat: int = 3,
               hour_base: int = 30_000, *, resources: dict | None = None, folder: Path | None = None,
               warm_up: bool = True) -> dict:
    """Write the history's last day, time the work; write the rest, sweep and purge as today's schedules
    would, time it again."""
    from imgpipeline import ConfigError

    if days < 2 or min(partitions, sources, hour_frames, hour_runs, live_frames, repeat, hour_base) < 1 \
            or fps <= 0:
        raise ConfigError("bench soak: --days must be at least 2, --partitions, --sources, --hour-frames, "
                          "--hour-runs, --live-frames, --repeat and --hour-base at least 1, --fps more "
                          "than 0")
    shape = Shape(days, fps, partitions, sources, hour_frames, hour_runs)
    print(f"history: {shape.sentence()}")
    resources = resources or local_resources()
    folder = Path(folder) if folder else scratch_dir("soak")
    soak = Soak(resources["kafka"], folder, shape, live_frames, repeat, hour_base)
    with soak.environment():
        result = run(soak, shape, warm_up)
    print_soak(result)
    write_result("soak", result)
    return result


def run(soak: Soak, shape: Shape, warm_up: bool) -> dict:
    from imgpipeline.cli.bench.scale import delete_topics, synthetic_jpeg
    from imgpipeline.defs.retention.sweep import DataRetention, sweep
    from imgpipeline.defs.streaming.batch_policy import BatchPolicy
    from imgpipeline.defs.streaming.frames_sensor import build_frames_sensor
    from imgpipeline.defs.streaming.upkeep import InstanceRetention, purge_runs
    from imgpipeline.ingest.messages import frame_key, sha256_hex
    from imgpipeline.lib.instance import open_instance
    from imgpipeline.paths import state_dir
    from imgpipeline.services.dagster_dev import dagster_home

    store = soak.storage.open()
    data = synthetic_jpeg()
    key = frame_key("bench-soak", datetime.now(UTC), "frame")
    store.put_new(key, data, sha256=sha256_hex(data))
    soak.image = (store.uri(key), sha256_hex(data), data)
    # Every pending frame asked for at once: the ticks timed are the daemon's, without its waiting.
    # The batch lane's ticks and runs are what it times.
    policy = BatchPolicy.from_env().model_copy(update={"max_wait_s": 0, "watch_s": 0, "fast_lane": False})
    soak.sensor = build_frames_sensor(policy)
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    runs_days = InstanceRetention.from_env().runs_keep_days
    try:
        soak.kafka.ensure_topics(partitions=shape.partitions)
        with open_instance(dagster_home(state_dir())) as instance:
            soak.instance = instance
            soak.history = history = History(store, instance, soak.kafka.frames_topic, shape, state_dir(),
                                             soak.image)
            started = time.perf_counter()
            history.day(yesterday, with_runs=True)
            print(f"  day 1 written in {time.perf_counter() - started:.0f} s")
            if warm_up:
                soak.measure("warm-up (not counted)", yesterday)  # imports, caches, the hour's first build
            first = soak.measure("day 1", yesterday)
            started = time.perf_counter()
            for back in range(2, shape.days + 1):
                day = today - timedelta(days=back)
                history.day(day, with_runs=back <= runs_days + 1)
                print(f"  {day} written ({time.perf_counter() - started:.0f} s so far)", flush=True)
            written = soak.sizes()
            started = time.perf_counter()
            swept = sweep(store, DataRetention.from_env(), today, log=lambda line: None)
            purged_at = time.time()
            purged = purge_runs(instance, InstanceRetention.from_env(), now=purged_at, log=lambda line: None)
            upkeep_s = time.perf_counter() - started
            last = soak.measure(f"day {shape.days}", yesterday)
    finally:
        delete_topics(soak.kafka)
    removed = {kind: sum(sum(c.values()) for c in per_day.values())
               for kind, per_day in swept.get("deleted", {}).items()}
    ratios = {name: round(last["costs"][name] / first["costs"][name], 2) if first["costs"][name] else None
              for name in COSTS}
    over = sorted(name for name, ratio in ratios.items() if ratio and ratio > LIMIT)
    return {"shape": shape.__dict__, "today": today.isoformat(), "first": first, "last": last,
            "written": written, "ratios": ratios, "over_limit": over,
            "retention_removed": removed, "runs_purged": sum(purged.values()), "purged_at": purged_at,
            "upkeep_s": round(upkeep_s, 1)}


def print_soak(result: dict) -> None:
    days = result["shape"]["days"]
    first, last = result["first"], result["last"]
    print(f"\n{'cost (median)':<34} {'day 1':>9} {f'day {days}':>9} {'ratio':>6}")
    for name, label in COSTS.items():
        ratio = result["ratios"][name]
        print(f"{label:<34} {first['costs'][name]:>8.3f}s {last['costs'][name]:>8.3f}s "
              f"{'' if ratio is None else f'{ratio:.2f}':>6}")
    print(f"{'store':<34} {first['store_objects']:>8,} {last['store_objects']:>9,} objects")
    print(f"{'':<34} {first['store_bytes'] / 1e6:>7.0f}MB {last['store_bytes'] / 1e6:>7.0f}MB")
    print(f"{'instance':<34} {first['instance_bytes'] / 1e6:>7.0f}MB {last['instance_bytes'] / 1e6:>7.0f}MB "
          f"({first['detect_runs']:,} and {last['detect_runs']:,} detect_frames runs)")
    written, removed = result["written"], result["retention_removed"]
    print(f"history written: {written['store_objects']:,} objects, {written['store_bytes'] / 1e6:.0f} MB, "
          f"{written['detect_runs']:,} detect_frames runs; retention and the purge ({result['upkeep_s']} s) "
          f"removed {', '.join(f'{n:,} {kind}' for kind, n in removed.items()) or 'no'} objects and "
          f"{result['runs_purged']:,} runs")
    worst = max((r for r in result["ratios"].values() if r is not None), default=None)
    if worst is not None:
        over = ", ".join(COSTS[name] for name in result["over_limit"])
        print(f"largest ratio day {days} ÷ day 1: {worst:.2f}; "
              + (f"over {LIMIT:g}×: {over}" if over else f"every cost within {LIMIT:g}× of day 1"))
