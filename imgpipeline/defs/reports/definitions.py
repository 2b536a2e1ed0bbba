"""The reports domain's Definitions: the daily report and its schedule."""

import dagster as dg

from imgpipeline.defs.reports.assets import daily_report, daily_report_job, daily_report_schedule

defs = dg.Definitions(assets=[daily_report], jobs=[daily_report_job], schedules=[daily_report_schedule])
