"""The warehouse domain's Definitions: hourly tables, daily_summary, their schedule and automation, and
the compaction of built hours' landing."""

import dagster as dg

from imgpipeline.defs.automation import AutomationPolicy
from imgpipeline.defs.warehouse.assets import (
    build_retrack_sensor,
    daily_summary,
    daily_summary_job,
    daily_summary_schedule,
    hourly_tables,
    hourly_tables_job,
    warehouse_automation,
)
from imgpipeline.defs.warehouse.compaction import compact_landing_job, compact_landing_schedule
from imgpipeline.lib.run_priority import RunPriority


def definitions(automation: AutomationPolicy, priority: RunPriority) -> dg.Definitions:
    return dg.Definitions(
        assets=[hourly_tables, daily_summary],
        jobs=[daily_summary_job, hourly_tables_job, compact_landing_job],
        sensors=[warehouse_automation(automation, priority), build_retrack_sensor(priority)],
        schedules=[daily_summary_schedule, compact_landing_schedule],
    )
