"""Dagster's queued run coordinator, which also sets how often the backfill daemon passes, and runs as many
runs at once as the machine has cores unless dagster.yaml says how many.

The automation sensors ask for an hour's tables through a backfill (defs/automation.py), which the
backfill daemon launches on its next pass, and an hour counts as in progress until a later pass sees its
run done: at Dagster's fixed 30 s, an hour's alerts wait up to a minute on passes alone. The daemon builds
the instance's run coordinator before its threads start, so this one, configured in dagster.yaml
(`backfill_interval_seconds`), sets the pace its backfill loop then reads.

Runs at once: `concurrency: runs: max_concurrent_runs` in dagster.yaml when set (Dagster reads it first),
else this coordinator's, which is the CPUs the daemon may use (`environment.cores()`, a pod's CPU limit
included) instead of Dagster's fixed 10: runs are forked beside the daemon, and each detects on a core.
Two at least: the fast lane's run holds one slot for good, and the hourly builds and alerts need another.
"""

from __future__ import annotations

import dagster as dg

from imgpipeline.environment import cores
from imgpipeline.lib import dagster_door

DEFAULT_BACKFILL_INTERVAL_S = 30  # Dagster's own


def runs_at_once() -> int:
    """The run queue's runs at once where dagster.yaml does not set them: the cores, two at least."""
    return max(2, cores())


class QueuedRunCoordinator(dg.QueuedRunCoordinator):
    """Dagster's queued run coordinator, with `backfill_interval_seconds` and the machine's cores as its
    runs at once."""

    @classmethod
    def config_type(cls):
        return {**super().config_type(), "backfill_interval_seconds": dg.Field(
            dg.IntSource, is_required=False, default_value=DEFAULT_BACKFILL_INTERVAL_S,
            description="Seconds between the backfill daemon's passes (Dagster's fixed 30 s otherwise).")}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        config = dict(config_value)
        interval = config.pop("backfill_interval_seconds", DEFAULT_BACKFILL_INTERVAL_S)
        if interval < 1:  # 0 would have the daemon pass over its backfills without a pause
            raise ValueError(f"run_coordinator: backfill_interval_seconds in dagster.yaml is {interval}: "
                             "set it to 1 or more (Dagster's own is 30)")
        dagster_door.set_backfill_interval(interval)
        config.setdefault("max_concurrent_runs", runs_at_once())
        return super().from_config_value(inst_data, config)
