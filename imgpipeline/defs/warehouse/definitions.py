"""The warehouse domain's Definitions: hourly tables, daily_summary, their schedule and automation."""

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

defs = dg.Definitions(
    assets=[hourly_tables, daily_summary],
    jobs=[daily_summary_job, hourly_tables_job],
    sensors=[warehouse_automation, retrack_sensor],
    schedules=[daily_summary_schedule],
)
