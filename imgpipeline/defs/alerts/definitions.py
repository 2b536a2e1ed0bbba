"""The alerts domain's Definitions: hourly alerts made as detections are updated."""

import dagster as dg

from imgpipeline.defs.alerts.assets import alerts
from imgpipeline.defs.automation import automation_sensor
from imgpipeline.defs.tables import ALERTS

alerts_automation = automation_sensor("alerts_automation", ALERTS.key)

defs = dg.Definitions(assets=[alerts], sensors=[alerts_automation])
