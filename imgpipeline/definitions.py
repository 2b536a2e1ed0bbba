"""The code location: the settings read once, each domain's Definitions built with its settings, merged,
with the resources they share."""

import dagster as dg

from imgpipeline.configuration import Settings
from imgpipeline.defs.alerts import definitions as alerts
from imgpipeline.defs.laboratory import definitions as laboratory
from imgpipeline.defs.reports import definitions as reports
from imgpipeline.defs.retention import definitions as retention
from imgpipeline.defs.streaming import definitions as streaming
from imgpipeline.defs.tables.io_manager import TablesIOManager
from imgpipeline.defs.tracking import definitions as tracking
from imgpipeline.defs.warehouse import definitions as warehouse

settings = Settings.from_env().checked()
automation = settings.automation, settings.run_priority
defs = dg.Definitions.merge(
    streaming.definitions(settings.batch),
    warehouse.definitions(*automation),
    tracking.definitions(*automation),
    alerts.definitions(*automation),
    reports.defs,
    retention.defs,
    laboratory.defs,
    # One process per run: a step subprocess would add seconds to every short asset run. The IO manager
    # hands the warehouse's tables to an asset of one's own that takes them (docs/warehouse.md).
    dg.Definitions(resources=settings.resources() | {"io_manager": TablesIOManager(storage=settings.storage)},
                   executor=dg.in_process_executor),
)
