"""frames_sensor: keeps the fast lane's follow_frames run going, or turns new Kafka offsets into
detect_frames runs; it reads offsets only.

With the fast lane on (`fast_lane`, the default), it launches no ranges: it keeps one follow_frames run
of the topic alive (follow.py) and moves its cursor as far as that run accounted for the offsets. With
it off, a tick reads the topic's offsets (offsets.py), plans the ranges to launch from its cursor, the
next offset per partition (planning.py, by the settings of batch_policy.py), within the runs the
partitions may still launch (run_queries.py), and requests one detect_frames run per range. It observes
the topic's lag on kafka_frames.
"""

import json
import time

import dagster as dg

from imgpipeline.defs.records.keys import range_name
from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.detect_frames import PARTITION_TAG, detect_frames, detect_run_config
from imgpipeline.defs.streaming.follow import FAST_LANE_TAG, follow_frames
from imgpipeline.defs.streaming.offsets import Offsets, read_offsets
from imgpipeline.defs.streaming.planning import Plan, follow_plan, plan_ranges
from imgpipeline.defs.streaming.run_queries import (
    active_runs,
    followers,
    free_runs,
    lane_backoff,
    lane_positions,
    room_left,
    runs_in_flight,
)
from imgpipeline.defs.tables import TOPIC_ASSET
from imgpipeline.defs.ticks import bound
from imgpipeline.resources import KafkaResource
from imgpipeline.resources.settings import env_name


def lag_observation(lag: dict[int, int], ends: dict[int, int], plan: Plan) -> dg.AssetObservation:
    """The topic's lag as an observation of kafka_frames (shown in the UI)."""
    return dg.AssetObservation(
        asset_key=TOPIC_ASSET,
        metadata={
            "unlaunched_lag": dg.MetadataValue.int(sum(lag.values())),
            "end_offsets": dg.MetadataValue.json({str(p): o for p, o in ends.items()}),
            "next_offsets": dg.MetadataValue.json(
                {p: s["next"] for p, s in plan.cursor["partitions"].items()}),
            "skipped_by_retention": dg.MetadataValue.int(plan.cursor["gaps"]),
        },
    )


def run_request(topic: str, partition: int, start: int, end: int, generation: int = 0,
                shed_after_s: float = 0.0) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=range_name(topic, partition, start, end, generation),
        job_name=detect_frames.name,
        run_config=detect_run_config(topic, partition, start, end, generation, shed_after_s),
        tags={PARTITION_TAG: f"{topic}-{partition}"},
    )


def sensor_description(policy: BatchPolicy) -> str:
    if policy.fast_lane:
        return ("Keeps one follow_frames run of the frames topic going (the fast lane): it detects each "
                "partition's new frames as they come and raises their alerts live. Backfills, replays and "
                f"repairs are detect_frames runs; {env_name(BatchPolicy, 'fast_lane')}=0 launches one per "
                "batch.")
    return (
        f"Launches detect_frames over new offsets of the frames topic: up to {policy.max_batch} "
        f"frames per run, or fewer once the oldest has waited {policy.max_wait_s:g} s. "
        f"A tick watches for a burst of new frames for up to {policy.watch_s:g} s. At most "
        f"{policy.runs_per_partition} runs of a partition and {policy.total_runs_in_flight} in all are "
        "queued or running; past that, frames wait on the topic and leave in larger runs."
    )


def build_frames_sensor(policy: BatchPolicy) -> dg.SensorDefinition:
    @dg.sensor(
        name="frames_sensor",
        jobs=[detect_frames, follow_frames],
        # The daemon's loop comes round every 5 s give or take milliseconds: a minimum of exactly
        # 5 s would skip every other loop. One second less keeps ticks `interval_s` apart.
        minimum_interval_seconds=max(1, policy.interval_s - 1),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=sensor_description(policy),
    )
    def frames_sensor(context: dg.SensorEvaluationContext):
        kafka: KafkaResource = bound(context, "kafka")
        topic = kafka.frames_topic
        previous = json.loads(context.cursor) if context.cursor else {}
        if previous.get("topic") not in (None, topic):
            previous = {}  # the topic was renamed: start over on the new one
        active = active_runs(context)
        lanes = followers(active, topic)
        if lanes and not policy.fast_lane:
            return dg.SkipReason(f"follow_frames run {lanes[0].run_id} still follows {topic} "
                                 f"({env_name(BatchPolicy, 'fast_lane')} is off now): detect_frames runs go "
                                 "on where it ends")
        cursor = json.loads(json.dumps(previous))
        offsets = read_offsets(context, kafka, cursor, policy)
        if isinstance(offsets, dg.SkipReason):
            return offsets

        plan, in_flight = plan_tick(context, topic, cursor, offsets, policy, lanes)
        for gap in plan.gaps:
            context.log.warning(gap)

        ends = offsets.ends
        lag = {p: max(0, ends[p] - plan.cursor["partitions"][str(p)]["next"]) for p in ends}
        events = []
        if lag != {int(p): v for p, v in previous.get("lag", {}).items()}:
            events.append(lag_observation(lag, ends, plan))
        new_cursor = {**plan.cursor, "topic": topic, "lag": {str(p): v for p, v in lag.items()}}
        generation = plan.cursor.get("generation", 0)
        requests = [run_request(topic, p, start, end, generation, policy.shed_after_s)
                    for p, start, end in plan.ranges]
        if policy.fast_lane and not lanes:
            if (waiting := lane_backoff(context, topic, time.time())) is None:
                requests.append(follow_request(topic, plan.cursor, policy))
            else:
                context.log.warning(waiting)
        if not requests and not events and new_cursor == cursor:
            flying = sum(in_flight.values()) + len(lanes)
            return dg.SkipReason(f"no new frames on {topic} ({flying} runs in flight)")
        return dg.SensorResult(
            run_requests=requests, cursor=json.dumps(new_cursor), asset_events=events,
            skip_reason=None if requests else f"waiting: {sum(lag.values())} frames pending",
        )

    return frames_sensor


def plan_tick(context: dg.SensorEvaluationContext, topic: str, cursor: dict, offsets: Offsets,
              policy: BatchPolicy, lanes: list[dg.DagsterRun]) -> tuple[Plan, dict[int, int]]:
    """The tick's plan, and the detect_frames runs in flight per partition it counted."""
    if policy.fast_lane:
        return follow_plan(cursor, offsets, True, lane_positions(context, topic, lanes, cursor)), {}
    # Off after the fast lane: ranges go on from where its runs got to.
    if cursor.get("followed"):
        base = follow_plan(cursor, offsets, False, lane_positions(context, topic, lanes, cursor)).cursor
    else:
        base = cursor
    # Counted after the watch: a run may have finished meanwhile.
    in_flight = runs_in_flight(context, topic)
    budgets = free_runs(in_flight, offsets.ends, policy)
    return plan_ranges(base, offsets.ends, offsets.beginnings, time.time(), policy, budgets,
                       room_left(in_flight, policy)), in_flight


def follow_request(topic: str, cursor: dict, policy: BatchPolicy) -> dg.RunRequest:
    """A follow_frames run from the cursor's next offsets on; the sensor relaunches it, run retries
    do not (two would read the same offsets)."""
    generation = cursor.get("generation", 0)
    starts = {p: state["next"] for p, state in cursor["partitions"].items()}
    config = {"topic": topic, "starts": starts, "run_s": policy.fast_lane_run_s,
              "max_batch": policy.max_batch}
    if generation:
        config["generation"] = generation
    if policy.shed_after_s:
        config["shed_after_s"] = policy.shed_after_s
    return dg.RunRequest(
        run_key=f"follow-{topic}-g{generation}-" + "-".join(f"{p}.{o}" for p, o in sorted(starts.items()))
                + f"-{time.time_ns()}",
        job_name=follow_frames.name,
        run_config={"ops": {"follow": {"config": config}}},
        # Run monitoring ends a run that outlived its time by far (hung): the sensor launches the next.
        tags={FAST_LANE_TAG: topic, "dagster/max_retries": "0",
              "dagster/max_runtime": str(int(policy.fast_lane_run_s + 600))},
    )
