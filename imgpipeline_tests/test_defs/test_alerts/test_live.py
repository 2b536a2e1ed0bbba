"""Live alerts on the real broker and storage: the fast lane raises the alerts of the demo's street video
(frame rules, and track rules on the checkout's lines and zones) as the frames land, with the numbers the
hourly `alerts` asset gives them; SIGKILLed mid-way and taken over, it raises and sends none twice, and the
hourly asset finds them all claimed and sent. A partition without the state of the frames before its
range (its first range landing after another partition's, the fast lane turned on after batch runs)
raises its frame rules' alerts live all the same, from its first range."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

import imgpipeline.defs.alerts.definitions  # noqa: F401  (the code location's listeners, as a run has them)
from imgpipeline.cli.samples import sample
from imgpipeline.defs.alerts.assets import alerts
from imgpipeline.defs.alerts.live import state_key
from imgpipeline.defs.hours import hour_key
from imgpipeline.defs.records.ledger import range_key
from imgpipeline.defs.streaming.claims import CLAIMS
from imgpipeline.defs.streaming.follow import follow_frames
from imgpipeline.defs.warehouse.assets import hourly_tables
from imgpipeline.ingest.producer import Frame, FrameProducer, Ledger
from imgpipeline.ingest.sources import video_frames
from imgpipeline.paths import PACKAGE_DIR
from imgpipeline.resources import AlertsResource, StorageResource, TrackingResource
from imgpipeline.vision.quality import encode_jpeg
from imgpipeline.vision.rules import FRAME_KINDS, TRACK_KINDS
from imgpipeline_tests.instances import bare_home, fresh_instance
from imgpipeline_tests.pipeline import drain, kill_when, landing_records, storage_env
from imgpipeline_tests.test_cli.street import START
from imgpipeline_tests.test_defs.test_alerts.test_alerts import stored_alerts
from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all
from imgpipeline_tests.test_defs.test_streaming.test_follow import assert_each_offset_once, follow, tick
from imgpipeline_tests.test_defs.test_tracking.test_tracking import materialize

pytestmark = [pytest.mark.integration, pytest.mark.results]
CHECKOUT_RULES = PACKAGE_DIR.parent / "alerts.yaml"
# The demo's rules, and rules that fire often on the street video (each episode, crossing or visit an alert).
MORE_RULES = """
  - {name: people-about, kind: class, classes: [person], min_confidence: 0.5, cooldown_s: 0}
  - {name: two-cars, kind: count, classes: [car], at_least: 2, cooldown_s: 0}
  - {name: stuck, kind: frozen, frames: 3, cooldown_s: 0}
  - {name: crossed-east, kind: line_cross, line: east}
  - {name: on-road, kind: zone_enter, zone: road}
  - {name: on-road-a-while, kind: dwell, zone: road, seconds: 1}
"""
BATCH = 25


def street(kafka, storage, folder) -> list:
    """The demo's street video sent as street-cam across 11:00, four frames in a row sent with the same
    bytes (a frozen spell)."""
    frames = list(video_frames(str(sample("bikes.mp4")), "street-cam", start=START))
    frames = [replace(f, data=frames[52].data) if 52 <= i < 56 else f for i, f in enumerate(frames)]
    producer = FrameProducer(kafka, storage, "street-cam", ledger=Ledger(folder / "ledger"))
    producer.send_all(frames, progress=False)
    return frames


def live_messages(kafka) -> dict[int, dict]:
    found = [json.loads(r.value) for r in read_all(kafka, kafka.alerts_topic)]
    numbers = [m["number"] for m in found]
    assert len(numbers) == len(set(numbers)), f"an alert was sent twice: {sorted(numbers)}"
    return {m["number"]: m for m in found}


def live_rules(kafka, tmp_path, monkeypatch, text: str):
    """The rules file, and the environment a follow_frames run of this process reads it from."""
    rules = tmp_path / "alerts.yaml"
    rules.write_text(text)
    for name, value in {"IMGPIPELINE_ALERTS_FILE": str(rules), "IMGPIPELINE_ALERTS_TOPIC": kafka.alerts_topic,
                        "IMGPIPELINE_HOME": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    return rules


def hourly_alerts(kafka, storage, rules) -> list[dict]:
    """The alerts the hourly chain gives the landed frames' hours (it sends those not sent yet)."""
    moments = [datetime.fromisoformat(r.captured_at.replace("Z", "+00:00")) for r in landing_records(storage)]
    first, last = (hour_key(m.replace(minute=0, second=0, microsecond=0, tzinfo=UTC))
                   for m in (min(moments), max(moments)))
    resources = {"storage": storage, "kafka": kafka, "tracking": TrackingResource(),
                 "alert_rules": AlertsResource(alerts_file=str(rules))}
    with fresh_instance() as instance:
        materialize([hourly_tables], first, last, resources, instance)
        materialize([alerts], first, last, resources, instance)
    return stored_alerts(storage)


def test_live_alerts_are_the_hourly_alerts_even_after_a_sigkill(kafka, tmp_path, monkeypatch):
    rules = live_rules(kafka, tmp_path, monkeypatch, CHECKOUT_RULES.read_text() + MORE_RULES)
    storage = StorageResource(uri=str(tmp_path / "store"))
    frames = street(kafka, storage, tmp_path)
    topic, store = kafka.frames_topic, storage.open()
    partition = next(iter({r.partition for r in read_all(kafka, topic)}))

    # A follow_frames run of its own process, SIGKILLed once it is a few ranges in.
    config = {"ops": {"follow": {"config": {"topic": topic, "starts": {"0": 0, "1": 0}, "idle_end_s": 60,
                                            "max_batch": BATCH}}}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    env = {**storage_env(storage), "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "IMGPIPELINE_FRAMES_TOPIC": topic, "IMGPIPELINE_ALERTS_TOPIC": kafka.alerts_topic,
           "IMGPIPELINE_ALERTS_FILE": str(rules), "IMGPIPELINE_HOME": str(tmp_path),
           "DAGSTER_HOME": bare_home(tmp_path / "dagster")}
    command = [sys.executable, "-m", "dagster", "job", "execute", "-m", "imgpipeline.definitions",
               "-j", follow_frames.name, "-c", str(tmp_path / "run.json")]
    folder = store.folder
    last = len(frames) - len(frames) % BATCH
    kill_when(command, env, folder / range_key(topic, partition, 5 * BATCH, 6 * BATCH),
              folder / range_key(topic, partition, last - BATCH, last))
    before_kill = live_messages(kafka)
    assert before_kill, "the killed run raised no live alert"
    assert json.loads(store.get(state_key(topic, partition)))["through"] >= 6 * BATCH

    # The next run takes over where the ledger says, as the sensor launches it.
    with fresh_instance() as instance:
        request = tick(kafka, storage, instance).run_requests[0]
        assert follow(request, instance, kafka, storage, max_batch=BATCH).success
    assert_each_offset_once(kafka, storage, [f.frame_id for f in frames])
    assert not store.list(CLAIMS)
    live = live_messages(kafka)
    assert set(before_kill) < set(live)  # the second run raised more, and none of the first's again
    # Frame and track rules raised live: every kind but dark (no dark frame in it) and line_cross (whether a
    # car's track crosses the west line where the railing hides it depends on the tracker).
    assert {m["kind"] for m in live.values()} >= {*FRAME_KINDS, *TRACK_KINDS} - {"dark", "line_cross"}
    assert all(m["annotated"] for m in live.values() if m["kind"] != "frozen")  # evidence drawn

    # The hourly chain: the same alerts, the same numbers, and none sent now.
    stored = hourly_alerts(kafka, storage, rules)
    assert {a["number"]: (a["rule"], a["frame_id"], a["track_id"]) for a in stored} == {
        n: (m["rule"], m["frame_id"], m["track_id"]) for n, m in live.items()}
    assert live_messages(kafka) == live  # nothing sent twice, by the stream and the hour together


# Frame rules only: a frozen spell and a dark frame decide alerts whatever the CPU detects.
FRAME_RULES = """
rules:
  - {name: people-about, kind: class, classes: [person], min_confidence: 0.5}
  - {name: stuck, kind: frozen, frames: 3}
  - {name: gone-dark, kind: dark}
"""
# Cameras whose keys the topic's two partitions share between them (checked below).
CAMERAS = ("gate", "yard", "dock", "lobby", "roof")


def camera(source: str, count: int, start: datetime, frozen: range, dark: list[int]) -> list[Frame]:
    """A camera's frames of the street video, a second apart from `start`: the same bytes at `frozen`
    (a frozen spell), black at `dark`."""
    video = list(video_frames(str(sample("bikes.mp4")), source, max_frames=count, start=start))
    black = encode_jpeg(np.zeros((video[0].height, video[0].width, 3), np.uint8))
    return [replace(f, frame_id=f"{source}-{i:03d}", captured=start + timedelta(seconds=i),
                    data=black if i in dark else video[frozen.start].data if i in frozen else f.data)
            for i, f in enumerate(video)]


def send(kafka, storage, folder, cameras: dict[str, list[Frame]]) -> None:
    """Each camera's frames sent as its producer sends them (keyed by the camera)."""
    for source, frames in cameras.items():
        FrameProducer(kafka, storage, source, ledger=Ledger(folder / source)).send_all(frames, progress=False)


def said(alert: dict) -> tuple:
    return alert["number"], alert["rule"], alert["source_id"], alert["frame_id"]


def test_every_partitions_first_range_raises_its_frame_alerts_live(kafka, tmp_path, monkeypatch):
    rules = live_rules(kafka, tmp_path, monkeypatch, FRAME_RULES)
    storage = StorageResource(uri=str(tmp_path / "store"))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    send(kafka, storage, tmp_path, {source: camera(source, 8, start, frozen=range(1, 4), dark=[5])
                                    for source in CAMERAS})
    held = {r.key.decode(): r.partition for r in read_all(kafka, kafka.frames_topic)}
    assert set(held.values()) == {0, 1}  # the cameras spread over both partitions

    # One follow_frames run from the topic's start: each partition's frames land in one range, one
    # partition's after the other's.
    with fresh_instance() as instance:
        request = tick(kafka, storage, instance).run_requests[0]
        assert follow(request, instance, kafka, storage, max_batch=100).success
    live = live_messages(kafka)
    # Each camera's frozen spell and dark frame raised live, on both partitions.
    assert {(m["source_id"], m["rule"]) for m in live.values()} >= {
        (source, rule) for source in CAMERAS for rule in ("stuck", "gone-dark")}

    # The hourly chain gives no alert the stream did not raise, and sends none again.
    assert {said(a) for a in hourly_alerts(kafka, storage, rules)} == {said(m) for m in live.values()}
    assert live_messages(kafka) == live


def test_after_batch_runs_the_fast_lane_raises_the_next_frames_alerts_live(kafka, tmp_path, monkeypatch):
    rules = live_rules(kafka, tmp_path, monkeypatch, FRAME_RULES)
    storage = StorageResource(uri=str(tmp_path / "store"))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    # Each camera's frozen spell begins in the frames the batch runs detect and reaches three identical
    # frames in the next; its second dark frame is within the first's cooldown (one episode).
    cameras = {source: camera(source, 12, start, frozen=range(4, 7), dark=[2, 7]) for source in CAMERAS[:2]}
    send(kafka, storage, tmp_path / "batch", {source: frames[:6] for source, frames in cameras.items()})
    with fresh_instance() as instance:
        _, cursor = drain(kafka, storage, instance)  # detect_frames runs: the fast lane off
        assert not read_all(kafka, kafka.alerts_topic)  # they raise nothing live
        send(kafka, storage, tmp_path / "fast", {source: frames[6:] for source, frames in cameras.items()})
        request = tick(kafka, storage, instance, cursor=cursor).run_requests[0]  # the fast lane on
        assert request.job_name == follow_frames.name
        assert follow(request, instance, kafka, storage, max_batch=100).success
    live = live_messages(kafka)
    assert {(m["source_id"], m["rule"], m["frame_id"]) for m in live.values() if m["rule"] == "stuck"} == {
        (source, "stuck", f"{source}-006") for source in cameras}

    # The hour's alerts on the frames the fast lane detected are the live ones, number for number; those
    # on the batch runs' frames the hourly chain raises and sends, each once.
    hourly = hourly_alerts(kafka, storage, rules)
    later = {f.frame_id for frames in cameras.values() for f in frames[6:]}
    assert {said(a) for a in hourly if a["frame_id"] in later} == {said(m) for m in live.values()}
    assert {said(m) for m in live_messages(kafka).values()} == {said(a) for a in hourly}


def test_a_camera_first_in_a_later_range_is_read_back_too_and_raises_nothing_twice(kafka, tmp_path,
                                                                                     monkeypatch):
    """Two cameras of one partition, detected by batch runs; then the fast lane takes the first camera's
    next frames in one range and the second's in a later one. The watch the first range warmed knew
    nothing of the second camera: it is warmed again with it, so the second camera's dark frame within
    its cooldown (the episode began in the batch runs' frames) raises nothing, live or twice."""
    rules = live_rules(kafka, tmp_path, monkeypatch, FRAME_RULES)
    storage = StorageResource(uri=str(tmp_path / "store"))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    cameras = {source: camera(source, 12, start, frozen=range(4, 7), dark=[2, 7])
               for source in ("gate", "lobby")}
    send(kafka, storage, tmp_path / "batch", {source: frames[:6] for source, frames in cameras.items()})
    with fresh_instance() as instance:
        _, cursor = drain(kafka, storage, instance)
        held = {r.key.decode(): r.partition for r in read_all(kafka, kafka.frames_topic)}
        assert held["gate"] == held["lobby"]  # one partition: one watch
        for source, frames in cameras.items():  # each camera's next frames in a range of their own
            send(kafka, storage, tmp_path / f"fast-{source}", {source: frames[6:]})
            ticked = tick(kafka, storage, instance, cursor=cursor)
            cursor = ticked.cursor or cursor
            assert follow(ticked.run_requests[0], instance, kafka, storage, max_batch=100).success
    live = live_messages(kafka)
    assert {(m["source_id"], m["rule"]) for m in live.values()} == {("gate", "stuck"), ("lobby", "stuck")}

    hourly = hourly_alerts(kafka, storage, rules)
    later = {f.frame_id for frames in cameras.values() for f in frames[6:]}
    assert {said(a) for a in hourly if a["frame_id"] in later} == {said(m) for m in live.values()}
    assert {said(m) for m in live_messages(kafka).values()} == {said(a) for a in hourly}


def test_the_history_a_watch_is_warmed_with_is_read_whole_while_compaction_replaces_its_files(tmp_path):
    """Compaction replaces an hour's landing files with one between the listing and the reading: the hour
    is listed and read again, every record of it found, none twice (a history read short would make
    the watch raise again what was raised before)."""
    from imgpipeline.defs.alerts.live import landed_history
    from imgpipeline.defs.records.keys import landing_key
    from imgpipeline_tests.scenes import landing_records

    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    hour = datetime(2026, 11, 20, 10, tzinfo=UTC)
    found = landing_records([(f"cam-{n:03d}", hour + timedelta(seconds=n), []) for n in range(6)])
    parts = [landing_key(hour, f"frames-0-{n}-{n + 3}") for n in (0, 3)]
    for key, records in zip(parts, (found[:3], found[3:]), strict=True):
        store.put(key, b"".join(r.to_json() + b"\n" for r in records))

    class Compacting:
        """The store, compacting the hour's two files into one right after they are first listed."""

        def __init__(self):
            self.done = False

        def __getattr__(self, name):
            return getattr(store, name)

        def list(self, prefix: str):
            listed = store.list(prefix)
            if not self.done and prefix.endswith("hour=10/"):
                self.done = True
                store.put(landing_key(hour, "compacted-0-0-6"), b"".join(store.get(k) for k in parts))
                for key in parts:
                    store.delete(key)
            return listed

    compacting = Compacting()
    history = landed_history(compacting, {"cam"}, set(), hour.timestamp(), hour.timestamp())
    assert compacting.done
    assert sorted(r.frame_id for r in history) == [f"cam-{n:03d}" for n in range(6)]
