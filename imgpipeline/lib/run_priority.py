"""How nice a run's worker runs: the runs that can wait yield the CPU to detection.

A run tagged `imgpipeline/nice` N runs that much nicer than the daemon (its steps' processes too): the
hourly chain's automation runs are, so that on a busy machine detection gets the CPU first; so is a
backfill's run that names no niceness (one launched from the UI), as nice as the hourly chain's.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from imgpipeline.resources.settings import FromEnv, setting

# How much nicer than the daemon a run's worker runs (0 to 19): the automation sensors tag their runs.
NICE_TAG = "imgpipeline/nice"
BACKFILL_TAG = "dagster/backfill"  # on each run a backfill launched


class RunPriority(FromEnv, BaseModel):
    """How much the runs that can wait yield the CPU to detection."""

    model_config = ConfigDict(extra="forbid")

    yielding: int = setting(
        "IMGPIPELINE_AUTOMATION_NICE", 19,
        "how much nicer (Unix niceness, 0 to 19) than the daemon the runs that can wait run: the automation "
        "sensors' (the hours' tables, tracks and alerts), re-detections and any backfill's: on a busy "
        "machine they take only the CPU detection leaves (at 10 they still took a tenth of a core from a "
        "draining backlog) and catch up when it is drained; alerts are raised live by the stream "
        "meanwhile; 0: the same priority",
        ge=0, le=19)


def backfill_nice(tags: dict[str, str]) -> int:
    """How nice a backfill's run that names no niceness runs: the setting, read then (an env file edited
    since the code location loaded and now wrong leaves the default, and the run launches)."""
    if NICE_TAG in tags or BACKFILL_TAG not in tags:
        return 0
    from imgpipeline import ConfigError

    try:
        return RunPriority.from_env().yielding
    except ConfigError:
        return RunPriority.model_fields["yielding"].default


def run_nice(tags: dict[str, str], backfill: int = 0) -> int:
    """The niceness a run's tags ask for: 0 to 19, 0 when not a number; when they name none, `backfill`
    for a backfill's run, else 0."""
    if NICE_TAG not in tags:
        return min(19, max(0, backfill)) if BACKFILL_TAG in tags else 0
    try:
        return min(19, max(0, int(tags[NICE_TAG])))
    except ValueError:
        return 0
