"""`imgpipeline bench latency`: the street video sent at a steady rate through the real daemon, as its
camera would send it, and how long after each frame was sent it landed and its alerts reached the Kafka
topic `alerts` (the rules of alerts.yaml and the lines and zones of zones.yaml, as the demo has them);
then backlogs through the same daemon against the bare detector's frames/s. Each backlog is sent while
the stream's run is stopped (SIGSTOP: the fast lane's follow_frames run; with a run per batch, the whole
daemon, which would launch runs), the daemon and its sensors ticking on as they do when a backlog forms,
and is timed from when the run goes on until its last frame landed; the bare detector is timed on the
same frames before the first backlog and after each, with the daemon and its runs stopped, and the next
backlog waits until the daemon has caught up with the ticks it missed meanwhile. Each backlog's
efficiency is against the bare runs either side of it, and the figure is their median.

With `--cameras N` (more than one), N cameras send the street video at once, each at the rate, each
with the street camera's lines and zones (a zones file of the benchmark's own): the figures are over all
of them.

With the fast lane (`--lane fast`) the alerts are raised live as each range lands, frame and track rules
alike; with a run per batch (`--lane batch`) they come from the hourly chain (landing → the hour's
tables → alerts). Either way the benchmark waits until each hour's detections were made again by a run
created after everything landed and its alerts by a run created after that (the hourly chain, which
confirms the live alerts and sends none again), then reads the topic once more.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime

from imgpipeline.cli.bench.common import (
    bare_fps,
    bench_frames,
    fresh_topic_and_store,
    local_resources,
    send_frames,
    write_result,
)
from imgpipeline.cli.bench.pipeline import LandingWatch, daemon, warm_up
from imgpipeline.lib.stats import percentile
from imgpipeline.vision.rules import TRACK_KINDS

SOURCE = "street-cam"  # the source alerts.yaml and zones.yaml speak of
FRAME_RULES = ("class", "count", "dark", "frozen")  # decided by a frame (and the source's frames before it)
TRACK_RULES = TRACK_KINDS  # decided by a track


def street_frames(count: int, start: datetime, source: str = SOURCE) -> list:
    """`count` frames of bikes.mp4 as the street camera's (or `source`'s), the video again after its end,
    captured at its own pace from `start`."""
    from imgpipeline.cli.samples import sample
    from imgpipeline.ingest.producer import Frame
    from imgpipeline.ingest.sources import video_frames

    video = list(video_frames(str(sample("bikes.mp4")), source, start=start))
    length = video[-1].captured - video[0].captured + (video[1].captured - video[0].captured)
    return [Frame(f"{source}-{i:06d}", f.data, f.captured + (i // len(video)) * length, f.width, f.height)
            for i, f in enumerate(video[i % len(video)] for i in range(count))]


class AlertsWatch:
    """Every message on the alerts topic, with when it arrived, read by a thread from the start."""

    def __init__(self, kafka):
        self.kafka, self.received, self.stop = kafka, [], threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        from kafka import TopicPartition

        # No group: a member of the detect group would make the runs' commits fail.
        consumer = self.kafka.consumer(group_id=None)
        partitions = consumer.partitions_for_topic(self.kafka.alerts_topic) or {0}
        consumer.assign([TopicPartition(self.kafka.alerts_topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        try:
            while not self.stop.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    now = time.time()
                    self.received += [(json.loads(r.value), now) for r in records]
        finally:
            consumer.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


class WallWatch:
    """When each frame first showed on the viewer's live wall (`/live/events`, read as a browser reads it,
    by a thread), the viewer in this process over the same storage. The wall looks at the landing every
    LOOK_EVERY_S (0.5 s) and shows each camera's latest frame: a frame overtaken within a look never shows."""

    def __init__(self, storage):
        from imgpipeline.cli.serve import Running, Warehouse
        from imgpipeline.resources import AlertsResource, TrackingResource
        from imgpipeline.web.app import create_app

        self.shown_at: dict[str, float] = {}
        self.running = Running(create_app(Warehouse(storage, TrackingResource(), AlertsResource())))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(self.running.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            connection.request("GET", "/live/events")
            kind = None
            for line in connection.getresponse():
                if line.startswith(b"event: "):
                    kind = line[7:].strip()
                elif line.startswith(b"data: "):
                    now = time.time()
                    for camera in json.loads(line[6:]) if kind is None else []:
                        self.shown_at.setdefault(camera["frame_id"], now)
                    kind = None
        except OSError:
            return  # the viewer stopped (or the stream ended): what was seen is kept

    def close(self) -> None:
        self.running.stop()
        self.thread.join(timeout=30)


def made_after(instance, hours: list[str], after: float) -> bool:
    """Whether each hour's detections were made again by a run created after `after`, and its alerts by
    a run created after those detections were written: the alerts of all that landed."""
    import dagster as dg

    from imgpipeline.defs.tables import ALERTS, DETECTIONS

    for hour in hours:
        since = after
        for key in (DETECTIONS.key, ALERTS.key):
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[hour], after_timestamp=since),
                limit=100).records
            written = [r.timestamp for r in records
                       if (run := instance.get_run_record_by_id(r.run_id)) is not None
                       and run.create_timestamp.timestamp() >= since]
            if not written:
                return False
            since = min(written)
    return True


def figures(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    return {"count": len(values), "p50_s": round(percentile(values, 0.5), 2),
            "p95_s": round(percentile(values, 0.95), 2), "max_s": round(max(values), 2)}


def cameras_of(count: int) -> list[str]:
    """The sources of `count` cameras: the street camera alone, else numbered copies of it."""
    return [SOURCE] if count == 1 else [f"{SOURCE}-{n}" for n in range(1, count + 1)]


def zones_for(sources: list[str], folder) -> str:
    """A zones file giving each source the street camera's lines and zones (zones.yaml's)."""
    import yaml

    from imgpipeline.paths import PACKAGE_DIR

    street = yaml.safe_load((PACKAGE_DIR.parent / "zones.yaml").read_text())["sources"][SOURCE]
    path = folder / "zones.yaml"
    # a copy each: one object under several keys would be written as a YAML alias, which zones files refuse
    copies = {source: json.loads(json.dumps(street)) for source in sources}
    path.write_text(yaml.safe_dump({"sources": copies}))
    return str(path)


def alert_latencies(received: list[tuple[dict, float]], sent_at: dict[str, float],
                    sources: list[str] = (SOURCE,)) -> dict:
    """Send → on the topic, per kind of rule, from each alert's first arrival (its evidence frame's send)."""
    first: dict[int, tuple[dict, float]] = {}
    for message, at in received:
        if message["source_id"] in sources:
            first.setdefault(message["number"], (message, at))
    kinds = {"frame_rule": FRAME_RULES, "track_rule": TRACK_RULES}
    found = {}
    for name, rule_kinds in kinds.items():
        mine = [(m, at) for m, at in first.values() if m["kind"] in rule_kinds and m["frame_id"] in sent_at]
        found[name] = {**figures([at - sent_at[m["frame_id"]] for m, at in mine]),
                       "rules": sorted({m["rule"] for m, _ in mine})}
    return found


def bench_latency(seconds: float = 120.0, rate: float = 2.0, backlog: int = 500, settle_s: float = 600.0,
                  resources: dict | None = None, lane: str = "fast", rounds: int = 3,
                  cameras: int = 1) -> dict:
    """Steady input from `cameras` cameras at once, then a backlog, through one real daemon; each figure
    from this one run."""
    from imgpipeline.ingest.producer import FrameProducer, Ledger
    from imgpipeline.lib.instance import open_instance
    from imgpipeline.paths import PACKAGE_DIR
    from imgpipeline.resources import AlertsResource, DetectorResource, TrackingResource

    if seconds <= 0 or rate <= 0 or backlog < 1 or rounds < 1 or cameras < 1:
        raise SystemExit("--seconds and --rate must be over 0, --backlog, --rounds and --cameras at least 1")
    resources = resources or local_resources()
    kafka, storage, folder = fresh_topic_and_store(resources["kafka"], "latency")
    kafka = kafka.model_copy(update={"alerts_topic": f"{kafka.frames_topic}-alerts"})
    kafka.ensure_topics(partitions=1)
    sources, start = cameras_of(cameras), datetime.now(UTC)
    streams = {source: street_frames(max(2, round(seconds * rate)), start, source) for source in sources}
    street = [frame for frames in streams.values() for frame in frames]
    detector = DetectorResource.from_env().model_copy(update={"threads": 0}).load()
    first_bare = bare_fps(bench_frames(backlog), detector)
    alerts = AlertsWatch(kafka)
    from imgpipeline.defs.streaming.batch_policy import BatchPolicy
    from imgpipeline.resources.settings import env_name

    env = {env_name(BatchPolicy, "fast_lane"): str(int(lane == "fast"))}
    if cameras > 1:  # the demo's rules are used with the checkout's zones file alone: named here
        env[env_name(TrackingResource, "zones_file")] = zones_for(sources, folder)
        env[env_name(AlertsResource, "alerts_file")] = str(PACKAGE_DIR.parent / "alerts.yaml")
    with daemon(kafka, storage, env=env) as local:
        producer = FrameProducer(kafka, storage, "bench", ledger=Ledger(folder / "ledger"), flush_every=100)
        watch = LandingWatch(storage)
        warm_up(producer, watch, bench_frames(1)[0], time.monotonic() + 300)
        wall = WallWatch(storage)
        print(f"steady: {len(street)} frames of {', '.join(sources)}, each at {rate:g} frames/s …")
        sent_at: dict[str, float] = {}
        sending = {source: FrameProducer(kafka, storage, source, ledger=Ledger(folder / f"ledger-{source}"))
                   for source in sources}
        senders = [threading.Thread(target=send_frames, args=(sending[source], frames, rate, sent_at, 1))
                   for source, frames in streams.items()]
        for sender in senders:
            sender.start()
        landed = watch.wait_for(len(street), time.monotonic() + seconds + settle_s)
        for sender in senders:
            sender.join()
        for camera in sending.values():
            camera.producer.close()
        if not landed:
            raise SystemExit(f"only {len(watch.landed_at)} of {len(street)} frames landed; see "
                             f"{local.dagster.logfile}")
        steady_landed = dict(watch.landed_at)
        wall.close()
        hours = sorted({f.captured.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%d-%H:00")
                        for f in street})
        print(f"  all landed; waiting for the hours' tables, tracks and alerts (at most {settle_s:g} s) …")
        settled = wait_settled(local.dagster.dagster_home, hours, max(steady_landed.values()), settle_s,
                               open_instance)
        time.sleep(3)  # the last alerts run's messages reach the topic's reader
        stored = stored_alerts(storage, street, sources)
        stream = (lambda: follower_pids(local.dagster.dagster_home)) if lane == "fast" else None
        backlogs = backlog_rounds(local.dagster.pid, producer, watch, detector, backlog, rounds, first_bare,
                                  stream)
        producer.producer.close()
    alerts.close()
    middle = sorted(backlogs, key=lambda r: r["efficiency"])[len(backlogs) // 2]  # the median round
    result = {
        "frames": len(street), "rate": rate, "cameras": cameras, "settled": settled,
        "landed": figures([steady_landed[k] - sent_at[k] for k in steady_landed if k in sent_at]),
        "on_the_wall": figures([wall.shown_at[k] - sent_at[k] for k in wall.shown_at if k in sent_at]),
        **alert_latencies(alerts.received, sent_at, sources),
        "alerts_received": len({m["number"] for m, _ in alerts.received if m["source_id"] in sources}),
        "alerts_stored": stored,
        "backlog": backlog, "backlog_fps": middle["backlog_fps"], "bare_fps": middle["bare_fps"],
        "efficiency": middle["efficiency"], "rounds": backlogs, "precision": detector.identity.precision,
        "lane": lane,
    }
    print_latency(result)
    write_result("latency", result)
    return result


def backlog_rounds(group: int, producer, watch, detector, backlog: int, rounds: int, bare: float,
                   stream=None) -> list[dict]:
    """Each round: a backlog sent while the stream's run (`stream()`: its processes; else the daemon's whole
    group) is stopped and timed through it, then the bare detector on the same frames with the group
    stopped; its efficiency against the bare runs either side of it (`bare`: the first, before the daemon
    started). Each round starts once the group is quiet again."""
    found = []
    for n in range(rounds):
        queue = bench_frames(backlog)
        wait_quiet(group)
        pids = stream() if stream else None
        print(f"backlog {n + 1} of {rounds}: {backlog} frames sent while "
              + ("the stream's run is stopped …" if pids else "the daemon and its runs are stopped …"))
        watch.landed_at.clear()
        with paused(group, pids):  # on the topic before the pipeline goes on: a backlog, not a race
            send_frames(producer, queue, None, {})
        resumed = time.time()
        # Sharp at the end: the frames the bare detector would do in 2 s.
        done = watch.wait_for(backlog, time.monotonic() + 1800, poll_s=0.1, closing=round(2 * bare))
        landed = [watch.landed_at[f.frame_id] for f in queue if f.frame_id in watch.landed_at]
        if not done or len(landed) < backlog:
            raise SystemExit(f"only {len(landed)} of {backlog} backlog frames landed within 1800 s")
        pipeline_fps = backlog / (max(landed) - resumed)
        with paused(group):  # nothing else on the CPU, as before the daemon started
            after = bare_fps(queue, detector)
        mean = (bare + after) / 2
        found.append({"backlog_fps": round(pipeline_fps, 1), "bare_fps": round(mean, 1),
                      "efficiency": round(pipeline_fps / mean, 3), "stopped": "stream" if pids else "daemon"})
        print(f"  {pipeline_fps:.1f} frames/s against the bare detector's {mean:.1f}: "
              f"{pipeline_fps / mean:.2f}")
        bare = after
    return found


def follower_pids(dagster_home) -> list[int]:
    """The processes of the follow_frames run in flight (its worker and what it started), or none: its
    worker as run monitoring knows it (this host, the pid still the worker's own process)."""
    import dagster as dg

    from imgpipeline.defs.streaming.follow import follow_frames
    from imgpipeline.lib.dagster_door import WorkerStatus
    from imgpipeline.lib.instance import open_instance
    from imgpipeline.lib.launcher import PID_TAG
    from imgpipeline.services.process import descendants

    with open_instance(dagster_home) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name=follow_frames.name,
                                               statuses=[dg.DagsterRunStatus.STARTED]), limit=1)
        if not runs or PID_TAG not in runs[0].tags:
            return []
        if instance.run_launcher.check_run_worker_health(runs[0]).status != WorkerStatus.RUNNING:
            return []
    pid = int(runs[0].tags[PID_TAG])
    return [pid, *descendants(pid)]


def wait_quiet(group: int, below: float = 0.15, at_most_s: float = 60.0) -> None:
    """Until the group's processes used less than `below` of a CPU over a second (the ticks it missed
    while stopped caught up, the runs they started done), at most `at_most_s`."""
    from imgpipeline.services.process import group_cpu_seconds

    deadline = time.monotonic() + at_most_s
    used = group_cpu_seconds(group)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = group_cpu_seconds(group)
        if sum(max(0.0, seconds - used.get(key, 0.0)) for key, seconds in now.items()) < below:
            return
        used = now
    print(f"  the daemon was still busy after {at_most_s:g} s; going on")


@contextmanager
def paused(group: int, pids: list[int] | None = None):
    """The processes `pids`, else the process group (the daemon, its code server and runs),
    stopped (once each has, not once each was sent the signal), continued after, the benchmark itself
    stopped by SIGTERM or SIGHUP meanwhile too (a stopped process would stay stopped)."""
    from imgpipeline.services.process import wait_stopped

    def leave(signum, frame):
        raise SystemExit(128 + signum)

    def signal_all(sig: int) -> None:
        if not pids:
            os.killpg(group, sig)
        for pid in pids or ():
            try:
                os.kill(pid, sig)
            except OSError:  # gone meanwhile
                pass

    saved = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        signal_all(signal.SIGSTOP)
        wait_stopped(pids or None, group)
        yield
    finally:
        signal_all(signal.SIGCONT)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def stored_alerts(storage, frames, sources: list[str] = (SOURCE,)) -> dict[str, int]:
    """The alerts tables' rows of the cameras in the frames' hours, per kind of rule."""
    from imgpipeline.defs.tables import ALERTS

    hours = sorted({f.captured.replace(minute=0, second=0, microsecond=0) for f in frames})
    rows = ALERTS.stored_hours(storage.open(), hours, ["kind", "source_id"]).to_pylist()
    kinds = [row["kind"] for row in rows if row["source_id"] in sources]
    return {"frame_rule": sum(k in FRAME_RULES for k in kinds),
            "track_rule": sum(k in TRACK_RULES for k in kinds), "all": len(kinds)}


def wait_settled(dagster_home, hours: list[str], last_landed: float, settle_s: float, open_instance) -> bool:
    deadline = time.monotonic() + settle_s
    with open_instance(dagster_home) as instance:
        while time.monotonic() < deadline:
            if made_after(instance, hours, last_landed):
                return True
            time.sleep(2)
    print(f"  not settled within {settle_s:g} s: the alert figures are of what arrived by then")
    return False


def print_latency(result: dict) -> None:
    def row(name: str, found: dict) -> str:
        if not found.get("count"):
            return f"  {name:<28} none"
        rules = f"  ({', '.join(found['rules'])})" if found.get("rules") else ""
        return (f"  {name:<28} {found['count']:>5} {found['p50_s']:>7.2f} {found['p95_s']:>7.2f} "
                f"{found['max_s']:>7.2f}{rules}")

    lane = {"fast": "the fast lane (follow_frames)", "batch": "a detect_frames run per batch"}[result["lane"]]
    cameras = f"{result['cameras']} cameras, each" if result["cameras"] > 1 else "one camera"
    print(f"\n{result['frames']} frames from {cameras} at {result['rate']:g} frames/s through {lane}, "
          f"detected at {result['precision']}:")
    print(f"  {'':<28} {'count':>5} {'p50 s':>7} {'p95 s':>7} {'max s':>7}")
    print(row("send → landed", result["landed"]))
    print(row("send → on the live wall", result["on_the_wall"]))
    print(row("send → alert, frame rule", result["frame_rule"]))
    print(row("send → alert, track rule", result["track_rule"]))
    print(f"alerts: {result['alerts_received']} on the topic, {result['alerts_stored']['all']} in the alerts "
          "tables")
    each = ", ".join(f"{r['efficiency']:.2f}" for r in result["rounds"])
    print(f"backlogs of {result['backlog']}: efficiency {result['efficiency']:.2f}, the median of {each} "
          f"({result['backlog_fps']} frames/s against the bare detector's {result['bare_fps']})")

