"""Faults under a real Dagster daemon (`dagster-daemon run`), the real broker and the real S3 endpoint: a
run worker SIGKILLed mid-range, the daemon killed and restarted mid-run, the broker SIGKILLed and restarted,
the S3 endpoint frozen (SIGSTOP) for 30 s, one after the other under one daemon, with a detect_frames run
per batch and again with the fast lane (one follow_frames run). Every time every frame lands exactly once,
and no alert on the topic is sent twice or raised twice for one event. Alerts come in the fast-lane half,
from the live lane, on rules and lines that fire often on the street video; with detect_frames they come
from the hourly chain, which makes the latest hour's alerts as its detections come (test_webhooks.py and the
chaos benchmark hold its deliveries).

Each case prints what it measured (frames sent, landed, duplicated, seconds from the fault until
everything had landed); run with `-s` to see them. No timing is asserted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG

from imgpipeline.defs.records.reader import Landing
from imgpipeline.defs.streaming.claims import CLAIMS
from imgpipeline.lib.instance import open_instance
from imgpipeline.lib.launcher import PID_TAG
from imgpipeline.paths import PACKAGE_DIR
from imgpipeline.resources import KafkaResource, StorageResource
from imgpipeline.services import LocalServices
from imgpipeline.services.process import alive
from imgpipeline.services.s3_endpoint import LOCAL_KEY_ID, LOCAL_SECRET
from imgpipeline_tests.conftest import DETECTOR_ENGINE, fresh_topics, module_database, s3_storage_resource
from imgpipeline_tests.pipeline import produce, stop_at_once, video_backlog, wait_for
from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all

pytestmark = [pytest.mark.integration, pytest.mark.instance, pytest.mark.long(0.7)]
FRAMES = 100  # two runs of 50: one to fault mid-range, one beside it (each detects for a second or more)
# Rules that fire often on the street video: a person seen (each episode), every crossing, every visit.
RULES = """rules:
  - {name: person, kind: class, classes: [person], cooldown_s: 0}
  - {name: crossed, kind: line_cross, line: west}
  - {name: on-road, kind: zone_enter, zone: road}
"""


@dataclass
class Pipeline:
    local: LocalServices
    storage: StorageResource
    sent: list[str]
    job: str  # detect_frames, or follow_frames with the fast lane
    kafka: KafkaResource
    folder: Path  # the producer's ledgers
    looked: float = 0.0  # when more_if_all_landed last listed the landing records
    landing: Landing | None = None  # the landing as the test last looked at it (read again only as it grows)
    opened: dg.DagsterInstance | None = None  # the daemon's instance, opened once

    def send(self) -> None:
        """FRAMES frames more, of ids of their own."""
        frames = video_backlog(FRAMES)
        produce(self.kafka, self.storage, self.folder / f"sent-{len(self.sent)}", frames)
        self.sent.extend(f.frame_id for f in frames)

    def landed(self) -> list:
        """The landing records as they are now."""
        self.landing = self.landing or Landing(self.storage.open())
        return self.landing.records()

    def more_if_all_landed(self) -> None:
        """On a busy machine the runs can be done with every frame sent before the test looks for one to
        fault: then FRAMES more (asked at most once a second)."""
        if time.monotonic() - self.looked < 1:
            return None
        self.looked = time.monotonic()
        if set(self.sent) <= {r.frame_id for r in self.landed()}:
            self.send()
        return None

    def instance(self) -> contextlib.AbstractContextManager[dg.DagsterInstance]:
        """The instance the daemon keeps its runs in, opened at the first look (a restarted daemon
        keeps them in the same); closed by the fixture."""
        self.opened = self.opened or open_instance(self.local.dagster.dagster_home)
        return contextlib.nullcontext(self.opened)

    def in_its_step(self) -> dg.DagsterRun | None:
        """The latest run of the job that has started its step, if one is under way."""
        with self.instance() as instance:
            runs = instance.get_runs(dg.RunsFilter(job_name=self.job, statuses=[dg.DagsterRunStatus.STARTED]))
            if runs and PID_TAG in runs[0].tags and instance.all_logs(
                    runs[0].run_id, of_type=dg.DagsterEventType.STEP_START):
                return runs[0]
        return None

    def runs_seen(self) -> str:
        """The job's latest runs as a failed wait tells them (status, whether forked, steps started), and
        the end of the daemon's log."""
        with self.instance() as instance:
            runs = [(r, instance.all_logs(r.run_id, of_type=dg.DagsterEventType.STEP_START))
                    for r in instance.get_runs(dg.RunsFilter(job_name=self.job), limit=5)]
        seen = [f"{r.run_id[:8]} {r.status.value} pid {r.tags.get(PID_TAG, 'none: not forked')}, "
                f"{len(steps)} steps started" for r, steps in runs]
        log = Path(self.local.dagster.logfile).read_text(errors="replace").splitlines()[-25:]
        return "; ".join(seen) + "\nthe daemon's log ends:\n" + "\n".join(log)

    def started_run(self, timeout_s: float = 360) -> dg.DagsterRun:
        """A run of the job half a second into its step and still running; a follower (always in its
        step, idle too) once it claimed a range of frames still to land."""
        while True:
            run = wait_for(lambda: self.in_its_step() or self.more_if_all_landed(), timeout_s,
                           f"a {self.job} run in its step", explain=self.runs_seen)
            time.sleep(0.5)  # scenario: the fault lands half a second into the run's frames
            if not alive(int(run.tags[PID_TAG])):
                continue
            if self.job == "follow_frames":
                self.looked = 0.0
                self.more_if_all_landed()
                wait_for(lambda: self.storage.open().list(CLAIMS) or self.more_if_all_landed(), 120,
                         "the follower to claim a range", every_s=0.02)
            return run

    def kill_a_started_run(self) -> dg.DagsterRun:
        """SIGKILL the worker of a run half a second into its frames; a run that finished in the meantime
        (gone, or its step done: the kill broke no range) makes way for the next one."""
        while True:
            run = self.started_run()
            try:
                os.kill(int(run.tags[PID_TAG]), signal.SIGKILL)
            except ProcessLookupError:
                continue
            with self.instance() as instance:
                if not instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS):
                    return run

    def landed_exactly_once(self, fault_at: float, what: str, timeout_s: float = 420) -> None:
        """Wait until every frame sent has landed; assert none twice; print the figures."""
        deadline = time.monotonic() + timeout_s
        while True:
            counts = Counter(r.frame_id for r in self.landed())
            if set(counts) >= set(self.sent) or time.monotonic() > deadline:
                break
            time.sleep(1)
        recovered = time.monotonic() - fault_at
        doubled = sum(n - 1 for n in counts.values())
        with self.instance() as instance:
            runs = Counter(r.status.value for r in instance.get_runs(dg.RunsFilter(job_name=self.job)))
        figures = (f"{what} ({self.job}): sent {len(self.sent)}, landed {len(set(counts) & set(self.sent))}, "
                   f"duplicated {doubled}, recovered {recovered:.1f} s after the fault; runs {dict(runs)}")
        print(f"\n{figures}")
        missing = len(set(self.sent) - set(counts))
        assert not missing, (f"{missing} frames never landed ({figures}); {self.runs_seen()}\n"
                             f"{self.last_said()}")
        assert doubled == 0
        self.no_alert_doubled()

    def last_said(self, lines: int = 30) -> str:
        """What the job's latest run said last (its own messages, not Dagster's events)."""
        with self.instance() as instance:
            runs = instance.get_runs(dg.RunsFilter(job_name=self.job), limit=1)
            said = [f"{e.dagster_event.event_type_value if e.dagster_event else ''} {e.user_message}"[:300]
                    for e in instance.all_logs(runs[0].run_id)] if runs else []
        return "its latest run said last:\n" + "\n".join(said[-lines:])

    def rules_alerted(self) -> set[str]:
        """The rules of the alerts on the topic so far about this test's frames."""
        sent, records = set(self.sent), read_all(self.kafka, self.kafka.alerts_topic)
        return {m["rule"] for m in (json.loads(r.value) for r in records) if m["frame_id"] in sent}

    def no_alert_doubled(self) -> dict[int, dict]:
        """The alerts on the topic so far: none sent twice, no event (a rule on one object of one frame)
        raised under two numbers."""
        messages = [json.loads(r.value) for r in read_all(self.kafka, self.kafka.alerts_topic)]
        numbers = Counter(m["number"] for m in messages)
        events = Counter((m["rule"], m["source_id"], m["frame_id"], m["detection_index"])
                         for m in {m["number"]: m for m in messages}.values())
        print(f"alerts on the topic: {len(numbers)} ({dict(Counter(m['rule'] for m in messages))})")
        assert [n for n, k in numbers.items() if k > 1] == []
        assert [e for e, k in events.items() if k > 1] == []
        return {m["number"]: m for m in messages}


@pytest.fixture(scope="module")
def services(own_services):
    """A broker and an S3 endpoint of this module's own: the tests kill and freeze them."""
    return own_services


FAST_LANE = pytest.param("follow_frames", marks=pytest.mark.covered(
    "the daemon's restart here with detect_frames, the fast lane's takeover in test_follow.py"))


@pytest.fixture(scope="module", params=["detect_frames", FAST_LANE])
def daemon(request, services, tmp_path_factory):
    """One Dagster daemon for the module's tests (the one that kills it starts it again), on a topic and an
    S3 prefix of its own, launching runs of 50 frames; then again with the fast lane. Its instance
    is on PostgreSQL where a test of that parameter runs there (`module_database`)."""
    home = tmp_path_factory.mktemp("faults")
    (home / "alerts.yaml").write_text(RULES)
    # The checkout's lines and zones of the street video, for the source the frames come from (`produce`).
    street = (PACKAGE_DIR.parent / "zones.yaml").read_text()
    (home / "zones.yaml").write_text(street.replace("street-cam:", "test:"))
    kafka = fresh_topics(services)
    storage = s3_storage_resource(services)
    with module_database(request), pytest.MonkeyPatch.context() as patch:
        for name, value in {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                            "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic,
                            "IMGPIPELINE_STORAGE_URI": storage.uri, "AWS_ENDPOINT_URL": storage.endpoint_url,
                            "AWS_ACCESS_KEY_ID": LOCAL_KEY_ID, "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET,
                            "IMGPIPELINE_MAX_BATCH": "50", "IMGPIPELINE_MAX_BACKLOG_BATCH": "50",
                            # OpenVINO itself at the CPU's own precision (`auto`): no detections kept from
                            # an earlier run (`recorded`), so a run of 50 frames lasts long enough to be
                            # caught mid-range (`kill_a_started_run` takes the next run where one ended
                            # first).
                            DETECTOR_ENGINE: "openvino", "IMGPIPELINE_DETECTOR_PRECISION": "auto",
                            "IMGPIPELINE_FAST_LANE": str(int(request.param == "follow_frames")),
                            "IMGPIPELINE_ALERTS_TOPIC": kafka.alerts_topic,
                            "IMGPIPELINE_ALERTS_FILE": str(home / "alerts.yaml"),
                            "IMGPIPELINE_ZONES_FILE": str(home / "zones.yaml"),
                            "IMGPIPELINE_HOME": str(home)}.items():
            patch.setenv(name, value)
        local = LocalServices(home / ".imgpipeline")
        local.up_daemon()
        try:
            yield local, kafka, storage, request.param
        finally:
            stop_at_once(local.dagster)


@pytest.fixture
def pipeline(daemon, tmp_path):
    """FRAMES frames of this test's own sent to the module's daemon."""
    local, kafka, storage, job = daemon
    pipeline = Pipeline(local, storage, [], job, kafka, tmp_path)
    pipeline.send()
    yield pipeline
    if pipeline.opened:
        pipeline.opened.dispose()


@pytest.mark.covered("test_launcher.py: a killed worker fails its run under run monitoring, and the daemon's "
                     "restart here")
def test_a_run_worker_killed_mid_range(pipeline):
    run = pipeline.kill_a_started_run()
    fault_at = time.monotonic()
    pipeline.landed_exactly_once(fault_at, "run worker SIGKILL")
    with pipeline.instance() as instance:
        killed = instance.get_run_record_by_id(run.run_id)
        after = instance.get_runs(dg.RunsFilter(job_name=pipeline.job, created_after=killed.create_timestamp))
        killed = killed.dagster_run
    assert killed.status == dg.DagsterRunStatus.FAILURE
    if pipeline.job == "detect_frames":
        # Run retries took it up (the daemon is ready only once they watch), not repair_sensor minutes
        # later.
        assert AUTO_RETRY_RUN_ID_TAG in killed.tags
    else:  # not retried: the sensor launched the next follow_frames run, which took over the claim
        assert AUTO_RETRY_RUN_ID_TAG not in killed.tags and after
        # The run that took over went on with the killed run's live alerts: this test's frames raised
        # alerts of frame and track rules, once each. A range's live alerts go out just after its records
        # land: they are waited for.
        wait_for(lambda: pipeline.rules_alerted() >= {"person", "on-road"}, 60,
                 "the takeover's person and on-road alerts on the topic",
                 explain=lambda: str(pipeline.rules_alerted()))
        pipeline.no_alert_doubled()


def test_the_daemon_killed_and_restarted_mid_run(pipeline):
    pipeline.started_run()
    pid = pipeline.local.dagster.pid
    os.killpg(pid, signal.SIGKILL)  # the daemon, its code server, fork server and runs
    wait_for(lambda: not alive(pid), 60, "the killed daemon to be gone", every_s=0.1)
    fault_at = time.monotonic()
    pipeline.local.up_daemon()
    pipeline.landed_exactly_once(fault_at, "daemon SIGKILL + restart")


@pytest.mark.edge  # the broker's outage, not where the instance keeps the runs that wait it out
def test_the_broker_killed_and_restarted_mid_run(pipeline, services):
    pipeline.started_run()
    os.kill(services.kafka.pid, signal.SIGKILL)
    fault_at = time.monotonic()
    time.sleep(3)  # scenario: the broker stays away three seconds
    services.kafka.start()
    pipeline.landed_exactly_once(fault_at, "broker SIGKILL + restart")


@pytest.mark.edge  # the object store's outage, likewise
def test_the_s3_endpoint_frozen_for_30_s_mid_run(pipeline, services):
    pipeline.started_run()
    pid = services.s3.pid
    os.kill(pid, signal.SIGSTOP)
    fault_at = time.monotonic()
    try:
        time.sleep(30)  # scenario: the fault itself, an endpoint frozen for 30 s
    finally:
        os.kill(pid, signal.SIGCONT)
    pipeline.landed_exactly_once(fault_at, "S3 endpoint SIGSTOP 30 s")
