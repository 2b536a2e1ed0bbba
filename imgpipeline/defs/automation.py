"""When the hourly assets are made: the automation conditions the domains share."""

import dagster as dg

# eager() counts an update of a dependency as handled once the target is requested *or updated*. An
# update that lands while the target's own run is in progress (that run read the data before it) is
# then swallowed when the run finishes, and the hour stays stale until its next update: for the last
# frames of an hour, for ever. Here only a request handles it: an update during a run asks for one
# more run once it is done. A target made by hand after an update is made once more, the same.
_requested = (
    dg.AutomationCondition.newly_requested() | dg.AutomationCondition.initial_evaluation()
).with_label("requested")
_eager = dg.AutomationCondition.eager().without(dg.AutomationCondition.in_latest_time_window()).replace(
    "handled", _requested)

# Like eager(), but for every hour, not just the latest: late frames re-materialize their hour.
on_landing_update = _eager.with_label("landing updated")

# Like the warehouse's own condition, and without waiting for the next hour: the latest hour's tracks,
# counts and alerts are made as its detections come, and made again once the next hour's detections
# exist.
on_detections_update = _eager.without(~dg.AutomationCondition.any_deps_missing()).with_label(
    "detections updated")


def automation_sensor(name: str, *keys: dg.AssetKey) -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates the conditions of a domain's assets, every 30 s."""
    return dg.AutomationConditionSensorDefinition(
        name, target=dg.AssetSelection.assets(*keys), default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
    )
