"""Dagster's instance kept to a bounded size: detect_frames (and follow_frames) runs purged by age.

The fast lane keeps a follow_frames run a topic an hour; with it off, frames_sensor launches a
detect_frames run per batch: thousands an hour at a thousand cameras. Each is a run record and an event
log in Dagster's storage, read by every page of the runs list and by each check that lists runs. What
the runs made lives in the landing files, the range ledger and the warehouse, so their records are kept
a stated time: `purge_runs` (daily) deletes the finished ones
older than IMGPIPELINE_RUNS_KEEP_DAYS, and failed ones after IMGPIPELINE_FAILED_RUNS_KEEP_DAYS (a failure
is looked into later than a success). Runs of the asset jobs (an hour's tables, a day's summary) are
few and hold Dagster's record of which partitions are made: they are kept. Sensor and schedule ticks
are purged by the daemon itself (`retention:` in dagster.yaml).
"""

import contextlib
import itertools
import os
import time
from collections import Counter
from datetime import UTC, datetime

import dagster as dg
from pydantic import model_validator

from imgpipeline.defs.partitions import scheduled_job
from imgpipeline.defs.streaming.detect_frames import detect_frames
from imgpipeline.defs.streaming.follow import follow_frames
from imgpipeline.resources.settings import FromEnv, env_name, setting

DAY_S = 86400
# Runs deleted per query: each batch is read anew, so a purge killed midway is finished by the next.
PURGE_BATCH = 500
SUCCEEDED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.CANCELED]


class InstanceRetention(FromEnv, dg.ConfigurableResource):
    """How long Dagster's instance keeps the records of detect_frames runs."""

    runs_keep_days: float = setting(
        "IMGPIPELINE_RUNS_KEEP_DAYS", 7,
        "days a finished detect_frames run's record and event log are kept (`purge_runs`, daily); what "
        "it made stays in the landing and the warehouse", gt=0)
    failed_runs_keep_days: float = setting(
        "IMGPIPELINE_FAILED_RUNS_KEEP_DAYS", 30,
        "days a failed detect_frames run's record and event log are kept, at least "
        "IMGPIPELINE_RUNS_KEEP_DAYS", gt=0)

    @model_validator(mode="after")
    def _failures_kept_longer(self):
        failed, done = self.failed_runs_keep_days, self.runs_keep_days
        if failed < done:
            model = type(self)
            raise ValueError(f"{env_name(model, 'failed_runs_keep_days')}={failed:g} is shorter than "
                             f"{env_name(model, 'runs_keep_days')}={done:g}: failed runs are kept at least "
                             "as long as the others")
        return self


def purge_runs(instance: dg.DagsterInstance, retention: InstanceRetention, now: float | None = None,
               log=print) -> Counter:
    """Delete the detect_frames and follow_frames runs past their keeping time, oldest first; how many of
    each status.

    A run's logs and event log go before its record: a purge killed between them leaves a run that the next
    purge finds and deletes, never logs or events of a run that no longer exists."""
    now = time.time() if now is None else now
    deleted: Counter = Counter()
    for job, (statuses, days) in itertools.product(
            (detect_frames.name, follow_frames.name),
            ((SUCCEEDED, retention.runs_keep_days),
             ([dg.DagsterRunStatus.FAILURE], retention.failed_runs_keep_days))):
        before = datetime.fromtimestamp(now - days * DAY_S, UTC)
        while records := instance.get_run_records(
                dg.RunsFilter(job_name=job, statuses=statuses, updated_before=before),
                limit=PURGE_BATCH, ascending=True):
            for record in records:
                run_id = record.dagster_run.run_id
                delete_logs(instance, run_id, log)
                delete_events(instance, run_id)
                instance.run_storage.delete_run(run_id)
                deleted[record.dagster_run.status.value] += 1
            log(f"purged {sum(deleted.values())} runs so far, now of {job} (updated before "
                f"{before:%Y-%m-%d %H:%M} UTC: {', '.join(s.value for s in statuses)})")
    return deleted


def delete_logs(instance: dg.DagsterInstance, run_id: str, log=print) -> None:
    """A run's stdout and stderr (Dagster's compute logs): in DAGSTER_HOME, or on S3 the objects under
    `<prefix>/compute_logs/storage/<run id>/` and the folder the run staged them in (`/tmp/<run id>`, left
    empty after each upload). A store that refuses is said and the purge goes on: the run's record is the
    instance's weight."""
    try:
        instance.compute_log_manager.delete_logs(prefix=[run_id])
    except Exception as exc:  # botocore's, OSError: the logs of this one run stay
        log(f"the logs of run {run_id} were not deleted: {type(exc).__name__}: {str(exc)[:200]}")


def delete_events(instance: dg.DagsterInstance, run_id: str) -> None:
    """A run's event log deleted. On SQLite each run's events are a file of their own
    (`history/runs/<run id>.db`) beside the index: Dagster's own deletion empties that file but leaves it
    (and makes one for a run that had none), a file a run for ever; here the run's rows leave the index
    and its file goes. Deleting again finds nothing and is fine. Another process that had read that run's
    events (a UI page of the run open) gets an error reading them again, never another run's events."""
    from imgpipeline.lib.dagster_door import SqliteEventLogStorage

    storage = instance.event_log_storage
    if not isinstance(storage, SqliteEventLogStorage):
        storage.delete_events(run_id)
        return
    with storage.index_connection() as conn:
        storage.delete_events_for_run(conn, run_id)
    if storage.supports_global_concurrency_limits:
        storage.free_concurrency_slots_for_run(run_id)
    shard = storage.path_for_shard(run_id)
    storage._initialized_dbs.discard(run_id)  # a file made again (a read) gets its tables again
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(shard + suffix)


@dg.op(description="Deletes the records and event logs of detect_frames runs past their keeping time.")
def purge_detect_runs(context: dg.OpExecutionContext,
                      instance_retention: InstanceRetention) -> dg.Output[dict]:
    retention = instance_retention
    deleted = purge_runs(context.instance, retention, log=context.log.info)
    return dg.Output(dict(deleted), metadata={
        "deleted": dg.MetadataValue.int(sum(deleted.values())),
        "by_status": dg.MetadataValue.json(dict(deleted)),
        "runs_keep_days": dg.MetadataValue.float(float(retention.runs_keep_days)),
        "failed_runs_keep_days": dg.MetadataValue.float(float(retention.failed_runs_keep_days)),
    })


purge_runs_job, purge_schedule = scheduled_job(
    "purge_runs", purge_detect_runs, "17 3 * * *",
    "Purges detect_frames runs older than IMGPIPELINE_RUNS_KEEP_DAYS (failed ones: "
    "IMGPIPELINE_FAILED_RUNS_KEEP_DAYS) from Dagster's instance.")
