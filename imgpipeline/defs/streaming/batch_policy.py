"""BatchPolicy: how frames_sensor batches offsets into runs, its settings declared once; and the
settings renamed since, read only to say their new names."""

import math

from pydantic import BaseModel, ConfigDict, model_validator

from imgpipeline.lib.run_queue import runs_at_once
from imgpipeline.resources.settings import FromEnv, setting

# Settings that were renamed, with what to use instead: set, they stop `imgpipeline check` and `dev`.
RENAMED = {
    "IMGPIPELINE_MAX_RUNS_IN_FLIGHT": "IMGPIPELINE_RUNS_PER_PARTITION, which counts runs per partition of "
                                      "the frames topic, and IMGPIPELINE_TOTAL_RUNS_IN_FLIGHT, over all of "
                                      "them (twice the run queue's runs at once)",
}


class BatchPolicy(FromEnv, BaseModel):
    """How frames_sensor batches offsets into runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch: int = setting("IMGPIPELINE_MAX_BATCH", 500, "frames per run at most, but under a backlog",
                             ge=1)
    # Under a backlog, runs grow instead of multiplying: each run's start-up is paid for more frames,
    # and runs per hour stop growing with the frame rate once batches reach this.
    max_backlog_batch: int = setting(
        "IMGPIPELINE_MAX_BACKLOG_BATCH", 5000,
        "frames per run at most under a backlog: a partition with more frames pending than its free runs "
        "take at IMGPIPELINE_MAX_BATCH splits them evenly over those runs, up to this many each (at or below "
        "IMGPIPELINE_MAX_BATCH: runs never grow)", ge=1)
    # The daemon evaluates sensors at most every 5 s, so frames seen at a tick have already
    # waited up to 5 s: 0 launches them at once; more than 5 s trades latency for larger runs.
    max_wait_s: float = setting(
        "IMGPIPELINE_MAX_WAIT_S", 0.0, "a partial batch is launched once its oldest frame waited this long",
        ge=0)
    # Runs of detect_frames queued or running at once per partition of the frames topic: while they
    # are busy, the partition's new frames wait and go out as one larger batch (less start-up). How
    # many run at once is the run queue's to say (dagster.yaml: max_concurrent_runs, and its tag limit
    # per partition).
    runs_per_partition: int = setting(
        "IMGPIPELINE_RUNS_PER_PARTITION", 2,
        "detect_frames runs queued or running at once per partition of the frames topic (the run "
        "queue's limits in dagster.yaml say how many run)", ge=1)
    # Runs queued or running at once over all partitions: twice the run queue's slots where dagster.yaml
    # leaves them to the machine (its cores, two at least), one starting while one runs; a dagster.yaml
    # that sets max_concurrent_runs wants this set to twice that too. Under a
    # backlog of many partitions the frames wait on the topic instead of in many small queued runs, and
    # leave in larger runs as slots free.
    total_runs_in_flight: int = setting(
        "IMGPIPELINE_TOTAL_RUNS_IN_FLIGHT", default_factory=lambda: 2 * runs_at_once(),
        description="detect_frames runs queued or running at once over all partitions (twice the runs at "
        "once; set it with dagster.yaml's max_concurrent_runs): past it, frames wait on the topic and leave "
        "in larger runs as runs end; the partitions served longest ago go first",
        shown="twice the machine's cores (4 at least)", ge=1)
    interval_s: int = setting("IMGPIPELINE_SENSOR_INTERVAL_S", 5, "seconds between sensor ticks", ge=1)
    # How long a tick that may launch a run watches for a burst of new frames (0: look once
    # and return). Keep it under the daemon's 5 s loop, or the next tick waits a whole loop more.
    watch_s: float = setting(
        "IMGPIPELINE_SENSOR_WATCH_S", 3.5,
        "how long an idle tick watches for new frames (0: off); at most the interval − 1 "
        "(4 for the daemon's 5 s loop)", ge=0)
    # Overload: past this wait on the topic, runs detect one frame in k per source and record the
    # rest as `shed` (detect_frames' shed_after_s). Off by default: every frame is detected.
    shed_after_s: float = setting(
        "IMGPIPELINE_SHED_AFTER_S", 0.0,
        "under overload, frames that waited longer than this on the topic are detected one in k per "
        "source and the rest recorded as `shed` (0: detect every frame)", ge=0)
    # The fast lane (follow.py), the default: one long-lived follow_frames run detects the topic's frames as
    # they come, instead of a detect_frames run per batch: landed within half a second instead of 4 to 7.
    fast_lane: bool = setting(
        "IMGPIPELINE_FAST_LANE", True,
        "1: follow_frames runs (IMGPIPELINE_FOLLOWERS) detect the partitions' new frames as they come "
        "(landed within ~0.5 s, alerts raised live; each holds one of the run queue's slots for good); "
        "0: a detect_frames run per batch (landed in 4–7 s; docs/streaming.md). Backfills, replays and "
        "repairs are detect_frames runs either way", shown="`1`")
    # Followers share the topic's partitions (membership.py): each holds one of the run queue's slots for
    # good, so by default they take half of them, the other half left to the hourly chain and backfills.
    followers: int = setting(
        "IMGPIPELINE_FOLLOWERS", default_factory=lambda: max(1, runs_at_once() // 2),
        description="follow_frames runs the fast lane keeps going per code location, all sharing the "
        "frames topic's partitions (no more than it has); each holds a run slot, and on Kubernetes is a pod "
        "of its own",
        shown="half the machine's cores (1 at least)", ge=1)
    fast_lane_run_s: float = setting(
        "IMGPIPELINE_FAST_LANE_RUN_S", 3600.0,
        "seconds a follow_frames run follows before it ends and the sensor launches the next", shown="`3600`",
        ge=60)
    # While watching, frames arriving faster than `burst_fps` over the last `settle_s` are a
    # burst still being produced: worth waiting for. A slower trickle is launched as it is.
    settle_s: float = 0.5
    burst_fps: float = 100.0

    def batch_for(self, pending: int, free_runs: int) -> int:
        """Frames per run for a partition with `pending` frames that may launch `free_runs` runs."""
        if free_runs <= 0 or pending <= free_runs * self.max_batch:
            return self.max_batch
        return max(self.max_batch, min(self.max_backlog_batch, math.ceil(pending / free_runs)))

    @model_validator(mode="after")
    def _watch_ends_before_next_tick(self):
        # A tick still watching when the daemon's 5 s loop comes round makes the next one wait.
        longest = max(self.interval_s, 5) - 1
        if self.watch_s > longest:
            raise ValueError(
                f"IMGPIPELINE_SENSOR_WATCH_S={self.watch_s:g} is too long for ticks {self.interval_s} s "
                f"apart (the daemon's loop is 5 s); use at most {longest} or 0 to turn watching off")
        return self
