"""`imgpipeline bench chaos`: cameras sending at a steady rate through the whole pipeline while a seeded
schedule of faults strikes its processes and disks; then whether anything was lost or doubled.

Everything runs on services of the benchmark's own (a broker, the S3 endpoint the store is on, Mosquitto,
PostgreSQL for the instance, `dagster dev` with the fast lane on, the viewer), as `imgpipeline services`
starts them. The street video goes at 2 frames/s and photos at half a frame a second from two more
cameras (each a producer that sends again what the broker did not acknowledge, as a camera's would), a
fourth camera publishes photos to Mosquitto for the MQTT bridge (run as `imgpipeline bridge mqtt`, started
again if it ends, as its service manager would), and a browser asks the viewer for a page every second.
Every ~`every_s` seconds (±25 %) the schedule deals one fault, all of them once in a seeded order before
any comes again (`chaos_faults.py`): a run worker, the follow run, the daemon or the code server
SIGKILLed; the broker, the S3 endpoint or PostgreSQL stopped (SIGSTOP) for 20–60 s; Mosquitto restarted
under the bridge; the viewer restarted mid-request; the disk of the pipeline's local state (a size-capped
tmpfs holding Dagster's home, the producers' ledgers and the bridge's journals; mounted only as root, the
fault left out otherwise) filled for 30 s. Shorter schedules (`every_s` under 120) shorten each fault's
length in proportion.

Then the cameras stop, and once every frame landed and each hour's tables and alerts were made after
that, it counts: every frame sent is one row of `frames`, every offset of the frames topic has its landing
record and its range in the ledger, each hour's rows are its landing's distinct frames, and every alert
of the tables is on the Kafka topic once and was delivered to its webhook once (a repeat only under its
idempotency key). It prints the fault log and these counts, and the time from the end of the last fault
until all was settled.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

from imgpipeline.cli.bench.chaos_cameras import (
    MQTT_CAMERA,
    PHOTOS,
    STREET,
    Camera,
    MqttCamera,
    mqtt_photos,
    photos,
    street_frames,
)
from imgpipeline.cli.bench.chaos_faults import FAULTS, dagster_children, dagster_gone
from imgpipeline.cli.bench.common import Hook, scratch_dir, write_result
from imgpipeline.services.process import alive

UNDEALT_TRIES = 3
CODE_LOCATION = "imgpipeline.definitions"  # as `dagster dev -m imgpipeline.definitions` names it
TMPFS_SIZE = "512m"  # the state folder's disk, filled by the disk fault (RAM while full)
SHORT_TMPFS_SIZE = "128m"  # in the short forms (faults under 120 s apart)
# Rules that fire often on what the cameras send, each delivered to the benchmark's webhook. A class seen
# again within 30 s is the same alert: with no cooldown each flicker of a detection was one more alert,
# and each alert an annotated frame, a crop and a clip that every run of its hour looked at again. (With
# 10 s, ~24 alerts in the short form's three minutes; their clips, made in one run of the alerts pool,
# held every later run of the chain for minutes.)
RULES = """notify: {ops: {url: "%s", backoff_s: 0.2, retry_for_s: 86400}}
rules:
  - {name: person, kind: class, classes: [person], cooldown_s: 30, notify: [ops]}
  - {name: bus, kind: class, classes: [bus], cooldown_s: 30, notify: [ops]}
  - {name: crossed, kind: line_cross, line: west, notify: [ops]}
  - {name: on-road, kind: zone_enter, zone: road, notify: [ops]}
"""


class Chaos:
    """The benchmark's services, settings, cameras, bridge, browser and fault log."""

    def __init__(self, folder: Path, every_s: float):
        from imgpipeline.services import LocalServices

        self.folder, self.every_s = folder, every_s
        self.home = folder / "home"
        self.tmpfs = self.home / ".imgpipeline"
        self.tmpfs.mkdir(parents=True)
        self.mounted = mount_tmpfs(self.tmpfs, TMPFS_SIZE if every_s >= 120 else SHORT_TMPFS_SIZE)
        (folder / "services").mkdir()
        (self.tmpfs / "services").symlink_to(folder / "services")  # the services' own data stay on disk
        self.local = LocalServices(self.tmpfs)
        self.stopping = threading.Event()
        self.drain_by = float("inf")
        self.faults: list[dict] = []
        self.browsed = Counter()
        self.bridge: subprocess.Popen | None = None
        self.bridge_starts = 0
        self.keeper = threading.Thread(target=self.keep_up, daemon=True)
        self.done = threading.Event()  # the reckoning ended: the bridge and the browser may stop
        self.dagster_groups: list[int] = []
        self.viewer_restarted = 0.0
        self.browsing: list[tuple[float, str]] = []  # (monotonic time, the viewer's answer)
        self.started = time.monotonic()

    def scaled(self, seconds: float, at_least: float = 2.0) -> float:
        """A fault's length at this schedule's pace (every_s of 120: as given), at least `at_least`."""
        return max(at_least, seconds * min(1.0, self.every_s / 120))

    def viewer_url(self) -> str:
        return self.local.viewer.address(self.local.viewer.ports)

    def producer(self, source: str):
        from imgpipeline.ingest.producer import FrameProducer

        return FrameProducer(self.kafka, self.storage, source, flush_every=10**6)

    def dagster_back(self, killed: list[int]) -> str:
        """`dagster dev` with its daemon and code server again: as it recovers by itself; else as its
        operator would bring it back (the code location reloaded as the UI's Reload does, and failing that,
        `dagster dev` killed with its runs and started again; one that ended by itself left its runs
        running). `killed`: the processes the fault killed, looked at only once they are gone."""
        deadline, wait_s = time.monotonic() + 10, self.scaled(20)
        while any(alive(pid) for pid in killed) and time.monotonic() < deadline:
            time.sleep(0.1)
        if (back := self.dagster_whole(wait_s)) is not None:
            return f"dagster dev recovered by itself in {back:.0f} s"
        if not self.local.dagster.running():
            said = "dagster dev ended"
        elif not dagster_children(self, "dagster._daemon"):
            said = f"dagster dev ran on without a daemon for {wait_s:g} s"
        else:
            said = f"the code server not back within {wait_s:g} s"
            if self.reload_code() and self.dagster_whole(60) is not None:
                return said + "; the code location reloaded (the UI's Reload)"
        dagster_gone(self)
        self.up_dagster()
        return said + "; dagster dev started again"

    def up_dagster(self) -> None:
        """`dagster dev` started (once more if its first start fails), its process group kept."""
        from imgpipeline.services import ServiceError

        try:
            self.local.up_ui()
        except ServiceError as error:
            print(f"  dagster dev did not start ({error}); once more")
            dagster_gone(self)
            self.local.up_ui()
        self.dagster_groups.append(self.local.dagster.pid)

    def dagster_whole(self, wait_s: float) -> float | None:
        """Seconds until `dagster dev` runs with a daemon and a code server, None if not within wait_s."""
        started = time.monotonic()
        while time.monotonic() < started + wait_s:
            if self.local.dagster.running() and dagster_children(self, "dagster._daemon") and \
                    dagster_children(self, "api grpc"):
                return time.monotonic() - started
            time.sleep(1)
        return None

    def reload_code(self) -> bool:
        from dagster_graphql import DagsterGraphQLClient

        port = self.local.dagster.ports["port"]
        try:
            DagsterGraphQLClient("127.0.0.1", port_number=port).reload_repository_location(CODE_LOCATION)
            return True
        except Exception as exc:  # the webserver's answer, whatever it is, is said by what follows
            print(f"  the reload failed: {exc}")
            return False

    def start(self, hook: Hook) -> None:
        from imgpipeline.defs.streaming.batch_policy import BatchPolicy
        from imgpipeline.paths import HOME_ENV, PACKAGE_DIR
        from imgpipeline.resources import AlertsResource, KafkaResource, StorageResource, TrackingResource
        from imgpipeline.resources.settings import env_name

        print("starting the broker, the S3 endpoint, Mosquitto and PostgreSQL …")
        self.local.up(log=lambda line: None, instance="postgres")
        (self.home / "alerts.yaml").write_text(RULES % hook.url)
        (self.home / "zones.yaml").write_text((PACKAGE_DIR.parent / "zones.yaml").read_text())
        topic = f"chaos-{uuid.uuid4().hex[:6]}"
        env = {HOME_ENV: str(self.home), env_name(BatchPolicy, "fast_lane"): "1",
               env_name(KafkaResource, "frames_topic"): topic,
               env_name(KafkaResource, "alerts_topic"): f"{topic}-alerts",
               env_name(StorageResource, "uri"): f"s3://imgpipeline/{topic}",
               env_name(AlertsResource, "alerts_file"): str(self.home / "alerts.yaml"),
               env_name(TrackingResource, "zones_file"): str(self.home / "zones.yaml")}
        for service in (self.local.kafka, self.local.s3, self.local.mqtt, self.local.postgres):
            env.update(service.env(service.ports))
        os.environ.update(env)
        self.kafka = KafkaResource.from_env()
        self.kafka.ensure_topics(partitions=2)
        self.storage = StorageResource.from_env()
        print("starting dagster dev (daemon, sensors, fast lane), the viewer and the MQTT bridge …")
        self.up_dagster()
        self.local.up_viewer()
        self.start_bridge(wait_s=120)

    def start_bridge(self, wait_s: float = 0.0) -> None:
        """The MQTT bridge in a process of its own; with `wait_s`, until it subscribed (a camera's photos
        before its first subscription go to no one)."""
        path = self.folder / "services" / "bridge.log"
        log = path.open("ab")
        self.bridge = subprocess.Popen(
            [sys.executable, "-m", "imgpipeline.cli", "bridge", "mqtt", "--topic", "cameras/+/frames",
             "--client-id", "chaos-bridge"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.bridge_starts += 1
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if b"subscribed to" in path.read_bytes():
                return
            if self.bridge.poll() is not None:
                break
            time.sleep(0.2)
        if wait_s:
            raise SystemExit(f"bench chaos: the MQTT bridge did not subscribe; see {path}")

    def keep_up(self) -> None:
        """The bridge started again when it ended; the viewer asked for its alerts page every second."""
        while not self.done.is_set():
            if self.bridge is not None and self.bridge.poll() is not None:
                self.start_bridge()
            try:
                with urllib.request.urlopen(f"{self.viewer_url()}/alerts", timeout=30) as response:
                    answer = str(response.status)
            except OSError as exc:
                answer = type(exc).__name__
            self.browsed[answer] += 1
            self.browsing.append((time.monotonic(), answer))
            self.done.wait(1)

    def deal(self, minutes: float, seed: int) -> None:
        """The schedule: a fault every ~every_s until `minutes` have passed since the cameras started and
        every kind of fault was dealt once (one that found nothing to strike comes again, UNDEALT_TRIES
        times at most)."""
        rng = random.Random(seed)
        kinds = [k for k in FAULTS if k != "fill disk" or self.mounted]
        order: list[str] = rng.sample(kinds, len(kinds))
        end = self.started + minutes * 60
        tried: Counter = Counter()
        owed = set(kinds)  # not dealt yet
        while True:
            wait = self.every_s * rng.uniform(0.75, 1.25)
            if time.monotonic() + wait >= end and not owed:
                break
            time.sleep(wait)
            if not order:
                order = rng.sample(kinds, len(kinds))
            kind = order.pop()
            began = time.monotonic()
            try:
                said = FAULTS[kind](self, rng)
            except Exception as exc:  # a fault that could not be dealt is said, and the schedule goes on
                said = f"not dealt: {type(exc).__name__}: {exc}"
            tried[kind] += 1
            if not said.startswith("not dealt") or tried[kind] >= UNDEALT_TRIES:
                owed.discard(kind)
            elif kind not in order:
                order.insert(0, kind)  # its turn comes again: nothing to strike yet (no run in flight)
            entry = {"at_s": round(began - self.started, 1), "fault": kind, "what": said,
                     "lasted_s": round(time.monotonic() - began, 1)}
            self.faults.append(entry)
            print(f"  {entry['at_s']:>7.1f} s  {kind:<18} {said}", flush=True)
        time.sleep(max(0.0, end - time.monotonic()))

    def close(self) -> None:
        self.stopping.set()
        self.done.set()
        if self.keeper.is_alive():
            self.keeper.join(timeout=40)  # it would start the bridge again
        if self.bridge is not None:
            self.bridge.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.bridge.wait(timeout=30)
        with contextlib.suppress(Exception):
            dagster_gone(self, every=True)
        self.local.down()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.tmpfs)], check=False)


def mount_tmpfs(path: Path, size: str) -> bool:
    """A size-capped tmpfs at `path` (as root); False where it cannot be had."""
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False)
    return done.returncode == 0


def bench_chaos(minutes: float = 30.0, every_s: float = 120.0, seed: int = 1, settle_s: float = 1200.0,
                folder: Path | None = None) -> dict:
    """The cameras through the pipeline for `minutes` under the fault schedule; then the reckoning."""
    from imgpipeline import ConfigError

    if minutes <= 0 or every_s <= 0 or settle_s <= 0:
        raise ConfigError("bench chaos: --minutes, --every and --settle must be more than 0")
    chaos = Chaos(Path(folder) if folder else scratch_dir("chaos"), every_s)
    hook = Hook()
    saved = dict(os.environ)
    # Stopped by SIGTERM or SIGHUP, it still stops what it started (and continues what it stopped): the
    # first signal ends the benchmark, and the clean-up is not cut short by another.
    def leave(signum, frame):
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        sys.exit(128 + signum)

    handlers = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        chaos.start(hook)
        cameras = [Camera(chaos, STREET, street_frames(), 2.0),
                   *(Camera(chaos, source, photos(source), 0.5) for source in PHOTOS),
                   MqttCamera(chaos, MQTT_CAMERA, mqtt_photos(), 0.5)]
        chaos.started = time.monotonic()
        for camera in cameras:
            camera.thread.start()
        chaos.keeper.start()
        disk = "the disk fault on a tmpfs" if chaos.mounted else "no disk fault (not root)"
        print(f"chaos: {minutes:g} min, a fault every ~{every_s:g} s (seed {seed}); {disk}")
        chaos.deal(minutes, seed)
        last_fault = chaos.faults[-1]["at_s"] + chaos.faults[-1]["lasted_s"] if chaos.faults else 0.0
        chaos.drain_by = time.monotonic() + settle_s / 2
        chaos.stopping.set()
        for camera in cameras:
            camera.thread.join()
        from imgpipeline.cli.bench.chaos_reckoning import reckon

        result = reckon(chaos, cameras, hook, settle_s, last_fault)
    finally:
        chaos.close()
        hook.close()
        os.environ.clear()
        os.environ.update(saved)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    result.update(minutes=minutes, every_s=every_s, seed=seed, faults=chaos.faults,
                  fault_counts=dict(Counter(f["fault"] for f in chaos.faults)), browsed=dict(chaos.browsed),
                  bridge_starts=chaos.bridge_starts,
                  camera_failures={c.source: dict(c.failures) for c in cameras},
                  cameras_crashed={c.source: c.crashed for c in cameras if c.crashed},
                  viewer_back=any(answer == "200" and at > chaos.viewer_restarted
                                  for at, answer in chaos.browsing))
    print_chaos(result)
    write_result("chaos", result)
    return result


def print_chaos(result: dict) -> None:
    print(f"\n{len(result['faults'])} faults in {result['minutes']:g} min: "
          + ", ".join(f"{k} ×{n}" for k, n in sorted(result["fault_counts"].items())))
    frames = result["frames"]
    print(f"frames: {frames['sent']} sent, {frames['rows']} rows {frames['statuses']}; lost "
          f"{frames['lost']}, doubled {frames['doubled']}, rows not sent {frames['extra']}, detected from "
          f"two messages {frames['detected_twice']}")
    offsets = result["offsets"]
    print(f"offsets: {offsets['end']} on the topic ({offsets['repeats']} repeats of a frame sent again); "
          f"without a landing record {offsets['without_record']}, in no range of the ledger "
          f"{offsets['holes']}")
    print(f"hours: {result['hours']['checked']} checked, rows ≠ landing in {result['hours']['mismatched']}")
    alerts = result["alerts"]
    print(f"alerts: {alerts['tables']} in the tables (doubled {alerts['tables_doubled']}); on Kafka missing "
          f"{alerts['kafka_missing']}, sent again under their numbers {alerts['kafka_doubled']}, saying "
          f"another alert under a number {alerts['kafka_conflicting']}, not in the tables "
          f"{alerts['kafka_extra']}; at the webhook missing {alerts['webhook_missing']}, doubled "
          f"{alerts['webhook_doubled']}, saying another alert under a number "
          f"{alerts['webhook_conflicting']}, not in the tables {alerts['webhook_extra']}")
    print(f"settled {result['settle_s']} s after the end of the last fault" if result["settled"]
          else f"NOT settled within the settle time ({result['settle_s']} s after the last fault)")
    print(f"viewer answers: {result['browsed']} (answering after its last restart: {result['viewer_back']}); "
          f"bridge started {result['bridge_starts']} times; cameras that stopped: "
          f"{result['cameras_crashed'] or 'none'}")
