"""The alerts domain's Definitions: hourly alerts made as detections are updated."""

import dagster as dg

from imgpipeline.defs.alerts.assets import alerts

alerts_automation = dg.AutomationConditionSensorDefinition(
    "alerts_automation",
    target=dg.AssetSelection.assets("alerts"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)

defs = dg.Definitions(assets=[alerts], sensors=[alerts_automation])
