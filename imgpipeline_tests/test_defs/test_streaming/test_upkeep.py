"""purge_runs: detect_frames runs past their keeping time leave Dagster's instance, record and event log;
failed ones later; runs of other jobs never. A purge SIGKILLed midway leaves nothing half-deleted, and
the next one finishes it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.utils import make_new_run_id
from dagster._serdes import serialize_value

from imgpipeline import ConfigError
from imgpipeline.defs.streaming.detect_frames import detect_frames, detect_run_config
from imgpipeline.defs.streaming.upkeep import DAY_S, InstanceRetention, purge_runs, purge_runs_job
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import STOP_AFTER, kill_once_stopped, run_resources

pytestmark = [pytest.mark.integration, pytest.mark.instance]
KEEP = InstanceRetention(runs_keep_days=7, failed_runs_keep_days=30)


@dg.op
def count():
    return 1


@dg.job
def hourly_tables_job():
    count()


def runs(instance: dg.DagsterInstance, job: dg.JobDefinition, ended: DagsterEventType, n: int) -> list[str]:
    """n runs of `job` as the daemon leaves them: a record, an event of its work and how it ended."""
    config = detect_run_config("frames", 0, 0, 100) if job is detect_frames else None
    first = instance.create_run_for_job(job, run_config=config)
    made = []
    for _ in range(n):
        run = first._replace(run_id=make_new_run_id()) if made else first
        if made:
            instance.add_run(run)
        instance.report_engine_event("detected 100 frames", run)
        instance.report_dagster_event(DagsterEvent(event_type_value=ended.value, job_name=run.job_name,
                                                   message="ended"), run_id=run.run_id)
        made.append(run.run_id)
    return made


def kept(instance: dg.DagsterInstance, run_ids: list[str]) -> list[bool]:
    """Per run: whether its record is there; a record gone with its event log still there fails."""
    found = []
    for run_id in run_ids:
        record = instance.get_run_by_id(run_id) is not None
        if not record and isinstance(instance.event_log_storage, SqliteEventLogStorage):
            # Its file deleted by a purge in another process: read as new (an empty log, or its events).
            instance.event_log_storage._initialized_dbs.discard(run_id)
        assert record or not instance.all_logs(run_id), f"{run_id}: events of a deleted run"
        found.append(record)
    return found


def test_runs_are_purged_by_age_failed_ones_later_other_jobs_never():
    with fresh_instance() as instance:
        done = runs(instance, detect_frames, DagsterEventType.RUN_SUCCESS, 3)
        failed = runs(instance, detect_frames, DagsterEventType.RUN_FAILURE, 2)
        other = runs(instance, hourly_tables_job, DagsterEventType.RUN_SUCCESS, 2)
        assert {instance.get_run_by_id(r).status for r in done + failed} == {
            dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE}
        assert not purge_runs(instance, KEEP, log=lambda _: None)
        assert all(kept(instance, done + failed + other))

        week = purge_runs(instance, KEEP, now=time.time() + 8 * DAY_S, log=lambda _: None)
        assert week == {"SUCCESS": 3}
        # On SQLite a run's event log is a file of its own: a purged run's goes with it (looked at before
        # anything reads the run's events, which makes the file again).
        if isinstance(instance.event_log_storage, SqliteEventLogStorage):
            files = [Path(instance.event_log_storage.path_for_shard(r)).exists() for r in done + failed]
            assert files == [False] * 3 + [True] * 2
        assert kept(instance, done + failed + other) == [False] * 3 + [True] * 4

        month = purge_runs(instance, KEEP, now=time.time() + 31 * DAY_S, log=lambda _: None)
        assert month == {"FAILURE": 2}
        assert kept(instance, failed + other) == [False] * 2 + [True] * 2


def test_the_purge_job_reads_its_keeping_times_from_the_environment(monkeypatch):
    monkeypatch.setenv("IMGPIPELINE_RUNS_KEEP_DAYS", str(1 / DAY_S))  # a second
    with fresh_instance() as instance:
        done = runs(instance, detect_frames, DagsterEventType.RUN_SUCCESS, 2)
        failed = runs(instance, detect_frames, DagsterEventType.RUN_FAILURE, 1)
        time.sleep(1.5)  # scenario: the runs grow older than their keeping time of a second
        result = purge_runs_job.execute_in_process(instance=instance, resources=run_resources())
        assert result.success
        purged = result.output_for_node("purge_detect_runs")
        assert purged == {"SUCCESS": 2}
        assert kept(instance, done + failed) == [False, False, True]


def test_a_shorter_keeping_time_for_failures_fails_at_load(monkeypatch):
    monkeypatch.setenv("IMGPIPELINE_RUNS_KEEP_DAYS", "14")
    monkeypatch.setenv("IMGPIPELINE_FAILED_RUNS_KEEP_DAYS", "3")
    with pytest.raises(ConfigError, match="IMGPIPELINE_FAILED_RUNS_KEEP_DAYS=3 is shorter than "
                                          "IMGPIPELINE_RUNS_KEEP_DAYS=14"):
        InstanceRetention.from_env()
    monkeypatch.setenv("IMGPIPELINE_RUNS_KEEP_DAYS", "0")
    with pytest.raises(ConfigError, match="IMGPIPELINE_RUNS_KEEP_DAYS"):
        InstanceRetention.from_env()


PURGE = STOP_AFTER + """
import sys, time
from dagster import DagsterInstance
from dagster._serdes import deserialize_value
from imgpipeline.defs.streaming.upkeep import InstanceRetention, purge_runs
instance = DagsterInstance.from_ref(deserialize_value(sys.stdin.read()))
stop_after(instance.run_storage, "delete_run")  # the oldest run deleted, the others not yet
purge_runs(instance, InstanceRetention(), now=time.time() + 8 * 86400)
"""


def test_a_purge_killed_midway_is_finished_by_the_next():
    with fresh_instance() as instance:
        old = runs(instance, detect_frames, DagsterEventType.RUN_SUCCESS, 40)
        failed = runs(instance, detect_frames, DagsterEventType.RUN_FAILURE, 3)
        purge = subprocess.Popen([sys.executable, "-c", PURGE], stdin=subprocess.PIPE, text=True,
                                 env=os.environ.copy())
        purge.stdin.write(serialize_value(instance.get_ref()))
        purge.stdin.close()
        kill_once_stopped(purge)
        midway = kept(instance, old)
        assert 0 < midway.count(False) < len(old), "the purge was not killed midway"

        assert purge_runs(instance, KEEP, now=time.time() + 8 * DAY_S, log=lambda _: None) == {
            "SUCCESS": midway.count(True)}
        assert not any(kept(instance, old))
        assert all(kept(instance, failed))
