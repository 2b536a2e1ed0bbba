"""Partition definitions, in one place: event-time hours and days, UTC."""

from __future__ import annotations

import os
from datetime import datetime

import dagster as dg

# The first event-time hour the warehouse knows; set it earlier to backfill older frames.
START = os.environ.get("IMGPIPELINE_PARTITIONS_START", "2026-01-01")

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
