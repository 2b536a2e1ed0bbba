"""Partition definitions, in one place: event-time hours and days, UTC (their keys: `hours.py`)."""

from __future__ import annotations

from datetime import date, timedelta

import dagster as dg
from pydantic import BaseModel, ConfigDict

from imgpipeline.resources.settings import FromEnv, setting


class Calendar(FromEnv, BaseModel):
    """Where the warehouse's partitions begin."""

    model_config = ConfigDict(extra="forbid")

    partitions_start: date = setting(
        "IMGPIPELINE_PARTITIONS_START", date(2026, 1, 1),
        "first hour/day of the warehouse partitions (YYYY-MM-DD); set it earlier to backfill older frames")


START = Calendar.from_env().partitions_start.isoformat()

# end_offset=1: the current hour and day are partitions too, filled as frames arrive.
hourly_partitions = dg.HourlyPartitionsDefinition(
    start_date=f"{START}-00:00", timezone="UTC", end_offset=1
)
daily_partitions = dg.DailyPartitionsDefinition(start_date=START, timezone="UTC", end_offset=1)


def yesterday_schedule(name: str, job, cron_schedule: str, description: str) -> dg.ScheduleDefinition:
    """A schedule that runs `job` for the day before, once a day (UTC), keyed by that day."""

    @dg.schedule(name=name, job=job, cron_schedule=cron_schedule, execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.RUNNING, description=description)
    def _schedule(context: dg.ScheduleEvaluationContext):
        yesterday = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
        return dg.RunRequest(run_key=yesterday, partition_key=yesterday)

    return _schedule
