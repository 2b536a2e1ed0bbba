"""`bench soak`'s site: its store, instance, topic and state folder in a scratch folder, and each piece of
recurring work the benchmark times over its history (soak.py), run by the real code in this process.
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

from imgpipeline.cli.bench.soak_history import Shape, source_of

# Dagster's own events of the runs made here: warnings only.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


# Cameras whose ledger and journal a start reads.
STARTED = 50


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
