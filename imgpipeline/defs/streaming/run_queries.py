"""The runs frames_sensor counts: detect_frames runs queued or running (per partition of the topic,
by their PARTITION_TAG, and in all; which statuses are in flight: defs/records/runs.py) and what they
leave free, and the fast lane's follow_frames runs (in flight, failing one after the other, how far
they got)."""

import json

import dagster as dg

from imgpipeline.defs.records.runs import ACTIVE
from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.detect_frames import PARTITION_TAG, detect_frames
from imgpipeline.defs.streaming.follow import FAST_LANE_TAG, follow_frames
from imgpipeline.defs.streaming.follower import POSITIONS_TAG
from imgpipeline.defs.ticks import tick_instance


def active_runs(context: dg.SensorEvaluationContext) -> list[dg.DagsterRun]:
    """The runs queued or running."""
    return tick_instance(context).get_runs(dg.RunsFilter(statuses=ACTIVE))


# After follow_frames runs failed one after the other, the next waits this long, doubled for each
# further failure, up to LANE_BACKOFF_MAX_S: a range that fails every time is tried again, not in a loop.
LANE_BACKOFF_S = 10.0
LANE_BACKOFF_MAX_S = 300.0


def lane_backoff(context: dg.SensorEvaluationContext, topic: str, now: float) -> str | None:
    """Why the next follow_frames run of `topic` of the sensor's code location waits (its predecessors
    there failed, the last one lately), or None: another host's failing followers hold back none of this
    one's. The first failure is taken over at once: a killed worker loses a tick, not minutes."""
    here = sensor_location(context)
    records = [record for record in tick_instance(context).get_run_records(
        dg.RunsFilter(job_name=follow_frames.name, tags={FAST_LANE_TAG: topic}), limit=32)
        if here in (None, location_of(record.dagster_run))][:8]
    failed = 0
    for record in records:
        if record.dagster_run.status != dg.DagsterRunStatus.FAILURE:
            break
        failed += 1
    if failed < 2:
        return None
    wait = min(LANE_BACKOFF_MAX_S, LANE_BACKOFF_S * 2 ** (failed - 2))
    ended = records[0].end_time or records[0].update_timestamp.timestamp()
    if now - ended >= wait:
        return None
    return (f"the last {failed} follow_frames runs failed (the latest: {records[0].dagster_run.run_id}): the "
            f"next starts {wait:g} s after it, in {wait - (now - ended):.0f} s")


def runs_in_flight(context: dg.SensorEvaluationContext, topic: str,
                   active: list[dg.DagsterRun] | None = None) -> dict[int, int]:
    """detect_frames runs queued or running, per partition of `topic` (by their PARTITION_TAG)."""
    counts: dict[int, int] = {}
    prefix = f"{topic}-"
    for run in active_runs(context) if active is None else active:
        value = run.tags.get(PARTITION_TAG, "")
        if run.job_name == detect_frames.name and value.startswith(prefix) and value[len(prefix):].isdigit():
            partition = int(value[len(prefix):])
            counts[partition] = counts.get(partition, 0) + 1
    return counts


def followers(active: list[dg.DagsterRun], topic: str, location: str | None = None) -> list[dg.DagsterRun]:
    """The follow_frames runs of `topic` queued or running: all of them, or those of one code location (a
    run executes where its code location's server is: on a site of several hosts, each keeps its own)."""
    return [run for run in active
            if run.job_name == follow_frames.name and run.tags.get(FAST_LANE_TAG) == topic
            and location in (None, location_of(run))]


def own_followers(context: dg.SensorEvaluationContext, active: list[dg.DagsterRun],
                  topic: str) -> list[dg.DagsterRun]:
    """The followers of the sensor's own code location. Each keeps its own: on a site of several hosts a
    host's runs execute where its code server is, so a host cut off takes only its own with it, and the
    others' followers take its partitions over."""
    return followers(active, topic, sensor_location(context))


def sensor_location(context: dg.SensorEvaluationContext) -> str | None:
    """The code location the sensor is evaluated in (None: in none, e.g. a test's context)."""
    origin = context.code_location_origin
    return origin.location_name if origin else None


def location_of(run: dg.DagsterRun) -> str | None:
    """The code location a run was launched from (None: launched from none, e.g. in a process)."""
    return run.remote_job_origin.location_name if run.remote_job_origin else None


def free_runs(in_flight: dict[int, int], partitions, policy: BatchPolicy) -> dict[int, int]:
    """Runs each partition may still launch."""
    return {p: max(0, policy.runs_per_partition - in_flight.get(p, 0)) for p in partitions}


def room_left(in_flight: dict[int, int], policy: BatchPolicy) -> int:
    """Runs all partitions may still launch together."""
    return max(0, policy.total_runs_in_flight - sum(in_flight.values()))


def lane_positions(context: dg.SensorEvaluationContext, topic: str, lanes: list[dg.DagsterRun],
                   cursor: dict, followers: int = 1) -> dict[int, int]:
    """How far the follow_frames runs accounted for each partition, as their tags say (those of the
    cursor's generation): the furthest of the runs in flight and the latest ones (a partition handed
    from one run to another, the later one's)."""
    latest = tick_instance(context).get_runs(
        dg.RunsFilter(job_name=follow_frames.name, tags={FAST_LANE_TAG: topic}), limit=2 * followers + 2)
    positions: dict[int, int] = {}
    for run in {run.run_id: run for run in [*lanes, *latest]}.values():
        try:
            said = json.loads(run.tags.get(POSITIONS_TAG, "{}"))
            if said.get("generation", 0) != cursor.get("generation", 0):
                continue
            for p, o in said.get("positions", {}).items():
                positions[int(p)] = max(int(o), positions.get(int(p), int(o)))
        except (ValueError, TypeError, AttributeError):  # a tag edited by hand: the others and the commit say
            continue
    return positions
