"""Event-time hours and days (UTC) as the storage layout and the partitions name them: pure functions,
no Dagster, so the warehouse's readers (`imgpipeline query`) need no code location."""

from __future__ import annotations

from datetime import date, datetime, timedelta


def hour_key(moment: datetime) -> str:
    """The hourly partition key of a UTC time: `2026-11-21-10:00`."""
    return moment.strftime("%Y-%m-%d-%H:00")


def hour_path(moment: datetime) -> str:
    """The hive-style folder of an event-time hour: `dt=2026-11-21/hour=10`."""
    return moment.strftime("dt=%Y-%m-%d/hour=%H")


def hours_in(window) -> list[datetime]:
    """The hours of a partition time window (a single-run backfill's range)."""
    hours, hour = [], window.start
    while hour < window.end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def days_in(window) -> list[date]:
    days, day = [], window.start
    while day < window.end:
        days.append(day.date())
        day += timedelta(days=1)
    return days
