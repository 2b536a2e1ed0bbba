"""The warehouse domain's Definitions: hourly tables, daily_summary, their schedule and automation, and
the compaction of built hours' landing."""

import dagster as dg

from imgpipeline.defs.warehouse.assets import (
    daily_summary,
    daily_summary_job,
    daily_summary_schedule,
    hourly_tables,
    hourly_tables_job,
    retrack_sensor,
    warehouse_automation,
)
from imgpipeline.defs.warehouse.compaction import compact_landing_job, compact_landing_schedule

defs = dg.Definitions(
    assets=[hourly_tables, daily_summary],
    jobs=[daily_summary_job, hourly_tables_job, compact_landing_job],
    sensors=[warehouse_automation, retrack_sensor],
    schedules=[daily_summary_schedule, compact_landing_schedule],
)
