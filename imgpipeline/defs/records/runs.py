"""The detect_frames runs in flight: the job's name, declared here so that what must wait for its runs
(compaction) finds them without importing the streaming domain, whose job takes its name from here."""

import dagster as dg

DETECT_JOB = "detect_frames"

ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def detect_runs_in_flight(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """The detect_frames runs queued or running. Asked for by status alone (Dagster's status index), the
    job told apart here: asked for by job as well, SQLite walks every detect_frames run the instance
    keeps (0.11 s at 190,000 runs, at every tick) to find the few in flight."""
    runs = instance.get_runs(dg.RunsFilter(statuses=ACTIVE))
    return [run for run in runs if run.job_name == DETECT_JOB]
