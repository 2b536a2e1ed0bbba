"""When the hourly assets are made: the automation conditions the domains share."""

import dagster as dg
from pydantic import BaseModel, ConfigDict

from imgpipeline.lib.run_priority import NICE_TAG, RunPriority
from imgpipeline.resources.settings import FromEnv, setting

AC = dg.AutomationCondition


class AutomationPolicy(FromEnv, BaseModel):
    """How often the domains' automation sensors look at their assets."""

    model_config = ConfigDict(extra="forbid")

    interval_s: int = setting(
        "IMGPIPELINE_AUTOMATION_INTERVAL_S", 30,
        "seconds between evaluations of the warehouse, tracking and alerts automation sensors: an hour's "
        "tables follow its new frames this much later at most, each evaluation reading the hours' records",
        ge=1)


# Like eager(), for every hour: a dependency updated since the target was last requested, or the target
# newly missing. eager() counts an update as handled once the target is requested *or updated*, so an
# update that lands while the target's own run is in progress (that run read the data before it) is
# swallowed when the run finishes, and the hour stays stale until its next update: for the last frames
# of an hour, for ever. Here only a request handles it, and each update carries its time, so one that
# lands after the request, even before the next tick, asks for one more run once the run is done. A
# target made by hand after an update is made once more, the same.
_updated_since_requested = (
    AC.any_deps_match(AC.newly_updated()).since(AC.newly_requested())
    | AC.newly_missing().since(AC.newly_requested() | AC.initial_evaluation())
)
_when_nothing_in_progress = ~AC.any_deps_in_progress() & ~AC.in_progress()
# Tracking waits for the detections a run is making, not for a backfill's: Dagster counts an hour of a
# backfill as in progress until the backfill daemon's next pass (every 5 s under the project's
# dagster.yaml, lib/run_queue.py; Dagster's own 30 s under deploy/) sees its run done, which would hold
# the hour's tracks back that long after its tables were made. Alerts keep waiting for the whole
# backfill: what they send cannot be taken back.
_when_no_run_in_progress = ~AC.any_deps_match(AC.run_in_progress()) & ~AC.in_progress()

# Late frames re-materialize their hour, whichever it is.
on_landing_update = (
    _updated_since_requested & ~AC.any_deps_missing() & _when_nothing_in_progress
).with_label("landing updated")

# Like the warehouse's own condition, and without waiting for the next hour: the latest hour's tracks,
# counts and alerts are made as its detections come, and made again once the next hour's detections
# exist.
on_detections_update = (_updated_since_requested & _when_nothing_in_progress).with_label("detections updated")
on_detections_made = (_updated_since_requested & _when_no_run_in_progress).with_label("detections made")


def automation_sensor(name: str, *keys: dg.AssetKey, policy: AutomationPolicy, priority: RunPriority,
                      run_per_hour: bool = False) -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates the conditions of a domain's assets (every 30 s by default).

    Hours asked for in one evaluation are made by one run over their range, through a backfill that the
    backfill daemon launches on its next pass (up to 5 s later under the project's dagster.yaml, 30 s
    under Dagster's own coordinator); with `run_per_hour`, for assets whose hours do not depend on each
    other, each hour is a run of its own, launched at once."""
    return dg.AutomationConditionSensorDefinition(
        name, target=dg.AssetSelection.assets(*keys), default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=policy.interval_s, emit_backfills=not run_per_hour,
        run_tags=yielding_tags(priority) or None,
    )


def yielding_tags(priority: RunPriority) -> dict[str, str]:
    """The tags of a run that yields the CPU to detection."""
    return {NICE_TAG: str(priority.yielding)} if priority.yielding else {}
