"""The tracking domain's Definitions: tracks and object counts, made as detections are updated."""

import dagster as dg

from imgpipeline.defs.automation import AutomationPolicy, automation_sensor
from imgpipeline.defs.tables import OBJECT_COUNTS, TRACKS
from imgpipeline.defs.tracking.assets import tracking_tables
from imgpipeline.lib.run_priority import RunPriority


def definitions(automation: AutomationPolicy, priority: RunPriority) -> dg.Definitions:
    # An hour's tracks and counts read detections only (its own and the hours beside it), never another
    # hour's tracks: hours are made side by side, each as soon as it is asked for.
    sensor = automation_sensor("tracking_automation", TRACKS.key, OBJECT_COUNTS.key, policy=automation,
                               priority=priority, run_per_hour=True)
    return dg.Definitions(assets=[tracking_tables], sensors=[sensor])
