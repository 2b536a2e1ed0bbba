"""The tracking domain's Definitions: tracks and object counts, made as detections are updated."""

import dagster as dg

from imgpipeline.defs.automation import automation_sensor
from imgpipeline.defs.tables import OBJECT_COUNTS, TRACKS
from imgpipeline.defs.tracking.assets import tracking_tables

# An hour's tracks and counts read detections only (its own and the hours beside it), never another
# hour's tracks: hours are made side by side, each as soon as it is asked for.
tracking_automation = automation_sensor("tracking_automation", TRACKS.key, OBJECT_COUNTS.key,
                                        run_per_hour=True)

defs = dg.Definitions(assets=[tracking_tables], sensors=[tracking_automation])
