"""Partition definitions, in one place: event-time hours and days, UTC."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import dagster as dg
from pydantic import BaseModel

from imgpipeline.resources.settings import FromEnv, setting


class Calendar(FromEnv, BaseModel):
    """Where the warehouse's partitions begin."""

    partitions_start: date = setting(
        "IMGPIPELINE_PARTITIONS_START", date(2026, 1, 1),
        "first hour/day of the warehouse partitions (YYYY-MM-DD); set it earlier to backfill older frames")


START = Calendar.from_env().partitions_start.isoformat()

# end_offset=1: the current hour and day are partitions too, filled as frames arrive.
hourly_partitions = dg.HourlyPartitionsDefinition(
    start_date=f"{START}-00:00", timezone="UTC", end_offset=1
)
daily_partitions = dg.DailyPartitionsDefinition(start_date=START, timezone="UTC", end_offset=1)


def hour_key(moment: datetime) -> str:
    """The hourly partition key of a UTC time: `2026-11-21-10:00`."""
    return moment.strftime("%Y-%m-%d-%H:00")


def hour_path(moment: datetime) -> str:
    """The hive-style folder of an event-time hour: `dt=2026-11-21/hour=10`."""
    return moment.strftime("dt=%Y-%m-%d/hour=%H")


def hours_in(window: dg.TimeWindow) -> list[datetime]:
    """The hours of a partition window (a single-run backfill's range)."""
    hours, hour = [], window.start
    while hour < window.end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def days_in(window: dg.TimeWindow) -> list[date]:
    days, day = [], window.start
    while day < window.end:
        days.append(day.date())
        day += timedelta(days=1)
    return days
