"""The alerts domain's Definitions: hourly alerts made as detections are updated."""

import dagster as dg

from imgpipeline.defs.alerts.assets import alerts
from imgpipeline.defs.alerts.live import LiveAlerts
from imgpipeline.defs.alerts.mqtt_out import CameraSnapshots
from imgpipeline.defs.automation import AutomationPolicy, automation_sensor
from imgpipeline.defs.records.listeners import listen
from imgpipeline.defs.tables import ALERTS
from imgpipeline.lib.run_priority import RunPriority

# Frame rules are also raised live by the fast lane as each range lands, numbered by the same ledger; with
# MQTT publishing on, each camera's latest frame goes to its snapshot topic as it lands.
listen(LiveAlerts())
listen(CameraSnapshots())


def definitions(automation: AutomationPolicy, priority: RunPriority) -> dg.Definitions:
    # An hour's alerts read detections only (its own and the hours beside it), never another hour's
    # alerts, and their numbers come from the ledger whatever the order: each hour is a run launched as
    # soon as it is asked for (not a backfill waiting for the backfill daemon's next pass, up to 5 s, or
    # 30 s under deploy/), one at a time (the `alerts` pool).
    sensor = automation_sensor("alerts_automation", ALERTS.key, policy=automation, priority=priority,
                               run_per_hour=True)
    return dg.Definitions(assets=[alerts], sensors=[sensor])
