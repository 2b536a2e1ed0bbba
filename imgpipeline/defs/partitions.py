"""Partition definitions, in one place: event-time hours and days, UTC (their keys: `hours.py`)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
from pydantic import BaseModel, ConfigDict

from imgpipeline.resources.settings import FromEnv, env_name, setting


class Calendar(FromEnv, BaseModel):
    """Where the warehouse's partitions begin, and which capture times they take."""

    model_config = ConfigDict(extra="forbid")

    partitions_start: date = setting(
        "IMGPIPELINE_PARTITIONS_START", date(2026, 1, 1),
        "first hour/day of the warehouse partitions (YYYY-MM-DD); set it earlier to backfill older frames")
    future_limit_min: float = setting(
        "IMGPIPELINE_FUTURE_LIMIT_MIN", 60.0,
        "a frame captured more than this many minutes after it reached the broker (or before the "
        "partitions' start) is recorded as `out_of_range` in the hour it reached the broker, not detected",
        gt=0)

    def out_of_range(self, captured: datetime, received: datetime) -> str | None:
        """Why a frame's capture time has no partition to go to (None when it has one): before the
        partitions' start, or further ahead of the broker's time than the limit (a camera's clock)."""
        start = datetime.combine(self.partitions_start, datetime.min.time(), UTC)
        if captured < start:
            return (f"captured_at {captured.isoformat()} is before the partitions' start "
                    f"{self.partitions_start} ({env_name(Calendar, 'partitions_start')})")
        ahead = (captured - received).total_seconds() / 60
        if ahead > self.future_limit_min:
            return (f"captured_at {captured.isoformat()} is {ahead:,.0f} min after the frame reached the "
                    f"broker ({received.isoformat()}), over the limit of {self.future_limit_min:g} min "
                    f"({env_name(Calendar, 'future_limit_min')})")
        return None


CALENDAR = Calendar.from_env()
START = CALENDAR.partitions_start.isoformat()

# end_offset=1: the current hour and day are partitions too, filled as frames arrive.
hourly_partitions = dg.HourlyPartitionsDefinition(
    start_date=f"{START}-00:00", timezone="UTC", end_offset=1
)
daily_partitions = dg.DailyPartitionsDefinition(start_date=START, timezone="UTC", end_offset=1)

# An hour with the hours either side: counts and alerts read the hour before (which side of a line a
# track was on, history for the rules) and the hour after (how long a visit lasted, silences).
AROUND = dg.TimeWindowPartitionMapping(
    start_offset=-1, end_offset=1, allow_nonexistent_upstream_partitions=True
)


def yesterday_schedule(name: str, job, cron_schedule: str, description: str) -> dg.ScheduleDefinition:
    """A schedule that runs `job` for the day before, once a day (UTC), keyed by that day."""

    @dg.schedule(name=name, job=job, cron_schedule=cron_schedule, execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.RUNNING, description=description)
    def _schedule(context: dg.ScheduleEvaluationContext):
        yesterday = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
        return dg.RunRequest(run_key=yesterday, partition_key=yesterday)

    return _schedule


def scheduled_job(name: str, op, cron_schedule: str, description: str
                  ) -> tuple[dg.JobDefinition, dg.ScheduleDefinition]:
    """A job of one op and the schedule (UTC, running from the start) that launches it."""

    @dg.job(name=name, description=description)
    def _job():
        op()

    return _job, dg.ScheduleDefinition(job=_job, cron_schedule=cron_schedule, execution_timezone="UTC",
                                       default_status=dg.DefaultScheduleStatus.RUNNING)
