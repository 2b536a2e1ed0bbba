"""The tracking domain's Definitions: tracks and object counts, made as detections are updated."""

import dagster as dg

from imgpipeline.defs.tracking.assets import tracking_tables

tracking_automation = dg.AutomationConditionSensorDefinition(
    "tracking_automation",
    target=dg.AssetSelection.assets("tracks", "object_counts"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)

defs = dg.Definitions(assets=[tracking_tables], sensors=[tracking_automation])
