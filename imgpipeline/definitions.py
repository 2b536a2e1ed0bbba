"""The code location: each domain's Definitions, merged, with the resources they share."""

import dagster as dg

from imgpipeline.defs.alerts import definitions as alerts
from imgpipeline.defs.laboratory import definitions as laboratory
from imgpipeline.defs.reports import definitions as reports
from imgpipeline.defs.resources import resources_from_env
from imgpipeline.defs.retention import definitions as retention
from imgpipeline.defs.streaming import definitions as streaming
from imgpipeline.defs.tracking import definitions as tracking
from imgpipeline.defs.warehouse import definitions as warehouse

defs = dg.Definitions.merge(
    streaming.defs,
    warehouse.defs,
    tracking.defs,
    alerts.defs,
    reports.defs,
    retention.defs,
    laboratory.defs,
    # One process per run: a step subprocess would add seconds to every short asset run.
    dg.Definitions(resources=resources_from_env(), executor=dg.in_process_executor),
)
