"""Run retries that Dagster's run-retry daemon missed, read again.

The launcher fails a run whose worker is gone so that run retries launch it again; this module makes
sure they do when Dagster's own ordering let one slip (repair_sensor calls it every tick)."""

from __future__ import annotations

import time

import dagster as dg

# How long after a run failed its retry may still be on the way (the run-retry daemon looks every 5 s),
# and how long after it the daemon is asked again (then repair_sensor runs its range).
RETRY_GRACE_S = 30.0
RETRY_WINDOW_S = 600.0


def rewind_lost_retries(instance: dg.DagsterInstance, now: float | None = None) -> list[str]:
    """Have Dagster's run-retry daemon read again the failures it read too early; the ids of those runs.

    The daemon follows run failures by their events, and Dagster stores a run's failure event a moment
    before it marks the run failed: a daemon that reads the event in between finds a run still started,
    does not retry it, and moves on. The run keeps `dagster/will_retry=true` and no retry ever comes,
    until repair_sensor runs its range again minutes later. A run marked so that failed between
    RETRY_GRACE_S and RETRY_WINDOW_S ago and has no retry puts the daemon's cursor back before its
    failure: the daemon's next look retries it the usual way (a run that has a retry gets no second)."""
    from datetime import UTC, datetime

    from imgpipeline.lib.dagster_door import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG, retry_cursor_key

    if not instance.run_retries_enabled:
        return []
    key = retry_cursor_key()
    cursor = instance.daemon_cursor_storage.get_cursor_values({key}).get(key)
    if not cursor:
        return []
    now = time.time() if now is None else now
    owed = {record.dagster_run.run_id for record in instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], tags={WILL_RETRY_TAG: "true"},
                      updated_after=datetime.fromtimestamp(now - RETRY_WINDOW_S, UTC)), limit=200)
        if AUTO_RETRY_RUN_ID_TAG not in record.dagster_run.tags
        and (record.end_time or now) <= now - RETRY_GRACE_S}
    lost: dict[str, int] = {}
    if owed:  # the failures' ids as the daemon reads them (across runs)
        for event in instance.fetch_run_status_changes(dg.DagsterEventType.RUN_FAILURE, limit=1000).records:
            if event.run_id in owed and event.storage_id <= int(cursor):
                lost.setdefault(event.run_id, event.storage_id)
    if lost:
        instance.daemon_cursor_storage.set_cursor_values({key: str(min(lost.values()) - 1)})
    return sorted(lost)
