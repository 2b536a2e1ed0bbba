"""ForkingRunLauncher: runs forked from the warm server land their frames, stop when asked, and
pick up a changed `.env` (the server restarts rather than run on stale settings)."""

from __future__ import annotations

import re
import time

import dagster as dg
import pytest
from dagster._core.definitions.reconstruct import ReconstructableRepository

from imgpipeline.defs.streaming.frames_sensor import build_frames_sensor
from imgpipeline.lib.launcher import PID_TAG
from imgpipeline.lib.run_priority import BACKFILL_TAG, NICE_TAG
from imgpipeline.resources import StorageResource
from imgpipeline_tests.conftest import DETECTOR_ENGINE
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import IMMEDIATE, landing_records, produce, video_backlog, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.instance]

LAUNCHER = {"module": "imgpipeline.lib.launcher", "class": "ForkingRunLauncher"}


@pytest.fixture
def instance(kafka, tmp_path, monkeypatch):
    """An instance with the forking launcher, its server starting; storage from `.env` ("first")."""
    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers)
    monkeypatch.setenv("IMGPIPELINE_FRAMES_TOPIC", kafka.frames_topic)
    monkeypatch.delenv("IMGPIPELINE_STORAGE_URI", raising=False)
    monkeypatch.setenv(DETECTOR_ENGINE, "openvino")  # runs that detect as they go: a kill lands mid-range
    write_env(tmp_path, "first")
    with fresh_instance({"run_launcher": LAUNCHER}) as instance:
        # Started before this process loads the code location, which copies `.env` into os.environ.
        assert not instance.run_launcher.warm()
        yield instance
        instance.run_launcher.dispose()


def write_env(home, store: str) -> StorageResource:
    storage = StorageResource(uri=(home / store).as_uri())
    (home / ".env").write_text(f"IMGPIPELINE_STORAGE_URI={storage.uri}\n")
    return storage


def launch_backlog(instance, kafka, tags: dict[str, str] | None = None) -> list[dg.DagsterRun]:
    """The sensor's run requests for what is on the topic, each launched through the launcher."""
    context = dg.build_sensor_context(instance=instance, resources={"kafka": kafka})
    requests = build_frames_sensor(IMMEDIATE)(context).run_requests
    job = ReconstructableRepository.for_module("imgpipeline.definitions", "defs").get_reconstructable_job(
        "detect_frames")
    runs = []
    for request in requests:
        run = instance.create_run_for_job(
            job_def=job.get_definition(), job_code_origin=job.get_python_origin(),
            run_config=request.run_config, tags={**request.tags, **(tags or {})})
        runs.append(instance.launch_run(run.run_id, workspace=None))
    return runs


def wait_finished(instance, runs, timeout_s: float = 180) -> list[dg.DagsterRun]:
    def latest() -> list[dg.DagsterRun]:
        return [instance.get_run_by_id(run.run_id) for run in runs]

    def finished() -> list[dg.DagsterRun] | None:
        now = latest()
        return now if all(run.is_finished for run in now) else None

    return wait_for(finished, timeout_s, "the runs to finish",
                    explain=lambda: str([run.status for run in latest()]), every_s=0.5)


def detecting_runs(instance, kafka, tmp_path, tags: dict[str, str] | None = None
                   ) -> tuple[StorageResource, list[dg.DagsterRun]]:
    """Forked runs over 200 frames (two ranges side by side: ~4 s each on OpenVINO, ~8 s on OpenCV),
    each started and in its step, detecting."""
    storage = StorageResource(uri=(tmp_path / "first").as_uri())
    produce(kafka, storage, tmp_path / "sent", video_backlog(200))
    runs = launch_backlog(instance, kafka, tags)

    def detecting(run) -> bool:
        return (instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
                and bool(instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)))

    wait_for(lambda: all(detecting(run) for run in runs), 60, "the forked runs to start their step",
             explain=lambda: str([instance.get_run_by_id(run.run_id).status for run in runs]))
    return storage, runs


def worker_pid(instance, run) -> int:
    """The pid the run's own process reported when it started."""
    (pid,) = [int(m[1]) for e in instance.all_logs(run.run_id)
              if (m := re.search(r"Started process for run \(pid: (\d+)\)", e.message or ""))]
    return pid


def test_forked_runs_land_frames_and_see_a_changed_env(instance, kafka, tmp_path):
    """The first launch waits for the starting server: even the first run is forked."""
    first = StorageResource(uri=(tmp_path / "first").as_uri())
    produce(kafka, first, tmp_path / "sent-1", video_backlog(6))
    runs = wait_finished(instance, launch_backlog(instance, kafka))
    assert runs and {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
    assert [int(run.tags[PID_TAG]) for run in runs] == [worker_pid(instance, run) for run in runs]
    assert len(landing_records(first)) == 6

    # A new .env: the next run starts from a fresh interpreter and lands where .env now says.
    second = write_env(tmp_path, "second")
    produce(kafka, second, tmp_path / "sent-2", video_backlog(4))
    runs = wait_finished(instance, launch_backlog(instance, kafka))
    assert runs and {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
    assert [int(run.tags[PID_TAG]) for run in runs] == [worker_pid(instance, run) for run in runs]
    assert len(landing_records(second)) == 4 and len(landing_records(first)) == 6
    assert instance.run_launcher.warm(timeout_s=120), "the fork server did not come back"


def fork_servers() -> set[int]:
    """The fork servers this process started, by pid."""
    import os
    from pathlib import Path

    mine = str(os.getpid())
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _server_of(p, mine)}


def _server_of(proc, parent: str) -> bool:
    try:
        stat, argv = (proc / "stat").read_text(), (proc / "cmdline").read_bytes()
    except OSError:  # gone since the listing
        return False
    return stat.rsplit(")", 1)[1].split()[1] == parent and b"imgpipeline.lib.fork_server" in argv


def test_two_launchers_of_one_instance_start_one_fork_server(instance, kafka, tmp_path):
    """Dagster builds an instance's launcher when first asked for it, and the run queue's two launching
    threads can each build one: the process still starts one fork server, and runs fork from it."""
    assert instance.run_launcher.warm(timeout_s=120)
    first = fork_servers()
    second = instance.get_ref().run_launcher  # what the second thread built
    second.register_instance(instance)
    assert second is not instance.run_launcher and second.warm(timeout_s=120)
    assert len(first) == 1 and fork_servers() == first
    produce(kafka, StorageResource(uri=(tmp_path / "first").as_uri()), tmp_path / "sent", video_backlog(4))
    runs = wait_finished(instance, launch_backlog(instance, kafka))
    assert runs and {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
    assert all(PID_TAG in run.tags for run in runs)  # forked, not started the default way
    assert fork_servers() == first


@pytest.mark.parametrize("tags", [{NICE_TAG: "5"}, {BACKFILL_TAG: "from-the-ui"}])
def test_a_forked_run_runs_as_nice_as_tagged_and_terminate_cancels_it(instance, kafka, tmp_path, tags,
                                                                     monkeypatch):
    """Runs tagged to yield the CPU (as the automation sensors tag theirs) run that much nicer; a backfill's
    run that names no niceness (launched from the UI) as nice as the setting says."""
    import os

    monkeypatch.setenv("IMGPIPELINE_AUTOMATION_NICE", "5")
    storage, runs = detecting_runs(instance, kafka, tmp_path, tags=tags)
    pids = [int(instance.get_run_by_id(run.run_id).tags[PID_TAG]) for run in runs]
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pids] == [min(19, own + 5)] * len(pids)
    assert all(instance.run_launcher.terminate(run.run_id) for run in runs)
    runs = wait_finished(instance, runs)
    assert runs and {run.status for run in runs} == {dg.DagsterRunStatus.CANCELED}
    assert all(PID_TAG in run.tags for run in runs)
    assert landing_records(storage) == []


def test_a_killed_worker_fails_its_run_under_run_monitoring(instance, kafka, tmp_path):
    """`kill -9` of a forked run worker (as the OOM killer does): the run does not stay STARTED
    forever; run monitoring sees the worker gone and fails the run, so retries can run it again."""
    import logging
    import os
    import signal

    from dagster._core.launcher import WorkerStatus
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run
    from kafka import TopicPartition

    from imgpipeline.services.process import alive

    storage, runs = detecting_runs(instance, kafka, tmp_path)
    launcher = instance.run_launcher
    pids = [int(instance.get_run_by_id(run.run_id).tags[PID_TAG]) for run in runs]
    assert {launcher.check_run_worker_health(instance.get_run_by_id(run.run_id)).status
            for run in runs} == {WorkerStatus.RUNNING}
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(pid) for pid in pids), 90, "the killed workers to be gone", every_s=0.1)

    for run in runs:
        record = instance.get_run_record_by_id(run.run_id)
        assert record.dagster_run.status == dg.DagsterRunStatus.STARTED  # nobody else noticed
        assert launcher.check_run_worker_health(record.dagster_run).status == WorkerStatus.FAILED
        monitor_started_run(instance, None, record, logging.getLogger("run-monitoring"))
    failed = [instance.get_run_by_id(run.run_id) for run in runs]
    assert {run.status for run in failed} == {dg.DagsterRunStatus.FAILURE}
    assert landing_records(storage) == []
    consumer = kafka.consumer()
    try:
        assert [consumer.committed(TopicPartition(kafka.frames_topic, p)) for p in (0, 1)] == [None, None]
    finally:
        consumer.close()


def test_a_worker_on_another_host_or_a_reused_pid_is_not_alive(tmp_path):
    """Run monitoring is not fooled by a pid that is alive but not the run's worker: recorded on another
    host, or taken by a process that started after the worker (a restart, pids wrapping around). Such a
    run fails, so retries run it again, instead of holding its partition's run budget forever; the
    worker that really is there stays running."""
    import logging
    import socket
    import subprocess

    from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.launcher import WorkerStatus
    from dagster._core.test_utils import create_run_for_test
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    from imgpipeline.lib.launcher import HOST_TAG, STARTED_TAG
    from imgpipeline.services.process import started_at

    stranger = subprocess.Popen(["sleep", "300"])  # alive, and no run's worker
    pid, here, long_ago = str(stranger.pid), socket.gethostname(), time.time() - 600
    try:
        with fresh_instance({"run_launcher": LAUNCHER}) as instance:
            cases = {
                "on another host": {PID_TAG: pid, HOST_TAG: f"not-{here}"},
                "pid taken later": {PID_TAG: pid, HOST_TAG: here, STARTED_TAG: f"{long_ago:.2f}"},
                "reported, pid taken later": {},
                "the worker itself": {PID_TAG: pid, HOST_TAG: here,
                                      STARTED_TAG: f"{started_at(stranger.pid):.2f}"},
            }
            runs = {name: create_run_for_test(instance, job_name="detect_frames", tags=tags,
                                              status=dg.DagsterRunStatus.STARTED)
                    for name, tags in cases.items()}
            # A worker launched the default way reports its pid when it starts: ten minutes ago here.
            reported = runs["reported, pid taken later"]
            event = DagsterEvent(
                event_type_value=DagsterEventType.ENGINE_EVENT.value, job_name="detect_frames",
                message=f"Started process for run (pid: {pid}).",
                event_specific_data=EngineEventData(metadata={"pid": dg.MetadataValue.text(pid)}))
            instance.store_event(EventLogEntry(
                error_info=None, level=logging.DEBUG, user_message=event.message, run_id=reported.run_id,
                timestamp=long_ago, dagster_event=event))

            launcher = instance.run_launcher
            health = {name: launcher.check_run_worker_health(run) for name, run in runs.items()}
            assert {name: h.status for name, h in health.items()} == {
                "on another host": WorkerStatus.FAILED, "pid taken later": WorkerStatus.FAILED,
                "reported, pid taken later": WorkerStatus.FAILED, "the worker itself": WorkerStatus.RUNNING}
            assert f"not-{here}" in health["on another host"].msg
            assert "belongs to a process started" in health["pid taken later"].msg
            for run in runs.values():
                monitor_started_run(instance, None, instance.get_run_record_by_id(run.run_id),
                                    logging.getLogger("run-monitoring"))
            failed, started = dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.STARTED
            assert {name: instance.get_run_by_id(run.run_id).status for name, run in runs.items()} == {
                "on another host": failed, "pid taken later": failed, "reported, pid taken later": failed,
                "the worker itself": started}
    finally:
        stranger.kill()
        stranger.wait()


def test_runs_a_killed_daemon_left_starting_fail_when_it_starts_again(tmp_path, monkeypatch):
    """A daemon killed with its fork server and runs leaves runs STARTING whose worker never reported
    its start; Dagster's run monitoring would wait its start timeout (60 s) for them. `dagster dev`
    fails them as it starts again, so run retries launch them at once; a run whose worker is alive, or
    that has no worker yet, is left starting."""
    import socket
    import subprocess

    from dagster._core.test_utils import create_run_for_test

    from imgpipeline.lib.instance import open_instance
    from imgpipeline.lib.launcher import HOST_TAG, STARTED_TAG
    from imgpipeline.services import LocalServices
    from imgpipeline.services.dagster_dev import dagster_home
    from imgpipeline.services.process import started_at

    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    here = socket.gethostname()
    gone = subprocess.Popen(["sleep", "0"])
    gone_started = started_at(gone.pid)
    gone.wait()
    living = subprocess.Popen(["sleep", "300"])
    cases = {
        "worker gone": {PID_TAG: str(gone.pid), HOST_TAG: here, STARTED_TAG: f"{gone_started:.2f}"},
        "worker alive": {PID_TAG: str(living.pid), HOST_TAG: here,
                         STARTED_TAG: f"{started_at(living.pid):.2f}"},
        "no worker yet": {},
    }
    local = LocalServices(tmp_path / ".imgpipeline")
    dagster_home(local.state)  # as `up_ui` makes it before it starts `dagster dev`
    try:
        with open_instance(local.dagster.dagster_home) as instance:
            assert type(instance.run_launcher).__name__ == "ForkingRunLauncher"
            runs = {name: create_run_for_test(instance, job_name="detect_frames", tags=tags,
                                              status=dg.DagsterRunStatus.STARTING)
                    for name, tags in cases.items()}
        local.dagster.prepare({})
        with open_instance(local.dagster.dagster_home) as instance:
            status = {name: instance.get_run_by_id(run.run_id).status for name, run in runs.items()}
            failure = instance.all_logs(runs["worker gone"].run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    finally:
        living.kill()
        living.wait()
    starting = dg.DagsterRunStatus.STARTING
    assert status == {"worker gone": dg.DagsterRunStatus.FAILURE, "worker alive": starting,
                      "no worker yet": starting}
    assert len(failure) == 1 and f"run worker {gone.pid} is gone" in failure[0].message


@dg.op
def fails():
    raise RuntimeError("the worker went away")


@dg.job
def failing():
    fails()


def test_a_failure_run_retries_read_too_early_is_read_again():
    """The run-retry daemon's cursor past a failure it read while the run still looked started (its
    retry never made): put back before that failure, and only for a run that is owed a retry."""
    from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG
    from dagster._daemon.auto_run_reexecution.event_log_consumer import _create_cursor_key

    from imgpipeline.lib.retries import RETRY_GRACE_S, RETRY_WINDOW_S, rewind_lost_retries

    key = _create_cursor_key(dg.DagsterEventType.RUN_FAILURE)
    with fresh_instance({"run_retries": {"enabled": True, "max_retries": 2}}) as instance:
        lost, retried = (failing.execute_in_process(instance=instance, raise_on_error=False).run_id
                         for _ in range(2))
        instance.add_run_tags(retried, {AUTO_RETRY_RUN_ID_TAG: "its-retry"})
        assert instance.get_run_by_id(lost).tags["dagster/will_retry"] == "true"
        failure = next(event for event in instance.fetch_run_status_changes(
            dg.DagsterEventType.RUN_FAILURE, limit=10).records if event.run_id == lost)
        past = str(instance.event_log_storage.get_maximum_record_id())
        instance.daemon_cursor_storage.set_cursor_values({key: past})

        assert rewind_lost_retries(instance, now=time.time()) == []  # its retry may still be on the way
        assert rewind_lost_retries(instance, now=time.time() + RETRY_WINDOW_S + 60) == []  # repair's now
        assert instance.daemon_cursor_storage.get_cursor_values({key})[key] == past
        assert rewind_lost_retries(instance, now=time.time() + RETRY_GRACE_S + 5) == [lost]
        cursor = int(instance.daemon_cursor_storage.get_cursor_values({key})[key])
        assert cursor == failure.storage_id - 1
        # What the daemon reads on its next look: the failure it missed, so the run is retried.
        again = instance.event_log_storage.get_logs_for_all_runs_by_log_id(
            after_cursor=cursor, dagster_event_type={dg.DagsterEventType.RUN_FAILURE})
        assert lost in {entry.run_id for entry in again.values()}

    with fresh_instance({"run_retries": {"enabled": False}}) as instance:
        failing.execute_in_process(instance=instance, raise_on_error=False)
        instance.daemon_cursor_storage.set_cursor_values({key: "1000000"})
        assert rewind_lost_retries(instance, now=time.time() + RETRY_GRACE_S + 5) == []
