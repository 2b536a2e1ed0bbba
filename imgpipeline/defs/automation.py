"""When the hourly assets are made: the automation conditions the domains share."""

import dagster as dg

# Like eager(), but for every hour, not just the latest: late frames re-materialize their hour.
on_landing_update = dg.AutomationCondition.eager().without(
    dg.AutomationCondition.in_latest_time_window()
).with_label("landing updated")

# Like the warehouse's own condition, and without waiting for the next hour: the latest hour's tracks,
# counts and alerts are made as its detections come, and made again once the next hour's detections
# exist.
on_detections_update = (
    dg.AutomationCondition.eager()
    .without(dg.AutomationCondition.in_latest_time_window())
    .without(~dg.AutomationCondition.any_deps_missing())
    .with_label("detections updated")
)


def automation_sensor(name: str, *keys: dg.AssetKey) -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates the conditions of a domain's assets, every 30 s."""
    return dg.AutomationConditionSensorDefinition(
        name, target=dg.AssetSelection.assets(*keys), default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
    )
