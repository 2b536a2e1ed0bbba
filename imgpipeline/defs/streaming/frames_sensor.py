"""frames_sensor: keeps the fast lane's follow_frames run going, or turns new Kafka offsets into
detect_frames runs; it reads offsets, and the range ledger and claims of partitions no follower holds.

With the fast lane on (`fast_lane`, the default), it keeps `followers` follow_frames runs of the topic
alive per code location (several hosts' code servers each keep their own), which all share its
partitions (follow.py, membership.py), and moves its cursor as far as they accounted for the offsets; it
launches ranges only while none is in flight anywhere and the next waits (those before it failed one
after the other): from where the ledger accounts for every offset, a range a follower claimed there and
left unaccounted for first, with the claim's ends (the landing files it may have written are rewritten,
not doubled; followers_left). With it off, a tick reads the topic's offsets (offsets.py),
plans the ranges to launch from its cursor, the next offset per partition (planning.py, by the settings
of batch_policy.py), within the runs the partitions may still launch (run_queries.py), and requests one
detect_frames run per range. It observes the topic's lag on kafka_frames.
"""

import json
import time
import uuid

import dagster as dg

from imgpipeline.defs.records.keys import range_name
from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.claims import resume
from imgpipeline.defs.streaming.detect_frames import PARTITION_TAG, detect_frames, detect_run_config
from imgpipeline.defs.streaming.follow import FAST_LANE_TAG, SHARING_TAG, follow_frames
from imgpipeline.defs.streaming.offsets import Offsets, read_offsets
from imgpipeline.defs.streaming.planning import Plan, follow_plan, plan_ranges
from imgpipeline.defs.streaming.run_queries import (
    active_runs,
    followers,
    free_runs,
    lane_backoff,
    lane_positions,
    own_followers,
    room_left,
    runs_in_flight,
)
from imgpipeline.defs.tables import TOPIC_ASSET
from imgpipeline.defs.ticks import bound
from imgpipeline.resources import KafkaResource
from imgpipeline.resources.settings import env_name

STAGGER_S = 60.0  # between the ends of followers launched at one tick


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
        return (f"Keeps {policy.followers} follow_frames run(s) of the frames topic going (the fast lane), "
                "sharing its partitions: they detect each partition's new frames as they come and raise "
                "their alerts live. Backfills, replays and "
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
        everywhere, lanes = followers(active, topic), own_followers(context, active, topic)
        if everywhere and not policy.fast_lane:
            return dg.SkipReason(f"follow_frames run {everywhere[0].run_id} still follows {topic} "
                                 f"({env_name(BatchPolicy, 'fast_lane')} is off now): detect_frames runs go "
                                 "on where it ends")
        cursor = json.loads(json.dumps(previous))
        offsets = read_offsets(context, kafka, cursor, policy)
        if isinstance(offsets, dg.SkipReason):
            return offsets

        # Followers that keep failing wait before the next is launched. With none left in flight no run
        # owns the topic's partitions: detect_frames runs take its new frames, as with the fast lane off.
        short = policy.fast_lane and len(lanes) < min(policy.followers, len(offsets.ends))
        waiting = lane_backoff(context, topic, time.time()) if short else None
        plan, in_flight = plan_tick(context, topic, cursor, offsets, policy, everywhere,
                                    unowned=bool(waiting) and not everywhere)
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
        if waiting:
            context.log.warning(waiting if everywhere else f"{waiting}; detect_frames runs take the frames")
        elif policy.fast_lane:
            requests += missing_followers(context, topic, lanes, plan.cursor, policy, offsets)
        if not requests and not events and new_cursor == cursor:
            flying = sum(in_flight.values()) + len(everywhere)
            return dg.SkipReason(f"no new frames on {topic} ({flying} runs in flight)")
        return dg.SensorResult(
            run_requests=requests, cursor=json.dumps(new_cursor), asset_events=events,
            skip_reason=None if requests else f"waiting: {sum(lag.values())} frames pending",
        )

    return frames_sensor


def plan_tick(context: dg.SensorEvaluationContext, topic: str, cursor: dict, offsets: Offsets,
              policy: BatchPolicy, lanes: list[dg.DagsterRun], unowned: bool = False,
              ) -> tuple[Plan, dict[int, int]]:
    """The tick's plan, and the detect_frames runs in flight per partition it counted. `unowned`: the
    fast lane is on but none of its runs holds the partitions (the next waits): ranges are planned."""
    if policy.fast_lane and not unowned:
        return follow_plan(cursor, offsets, True, lane_positions(context, topic, lanes, cursor,
                                                                   policy.followers)), {}
    # Off after the fast lane (or none of its runs in flight): ranges go on from where its runs got to.
    if cursor.get("followed"):
        base = follow_plan(cursor, offsets, False, lane_positions(context, topic, lanes, cursor,
                                                                  policy.followers)).cursor
    else:
        base = cursor
    base, claimed = followers_left(context, topic, base, offsets) if policy.fast_lane or cursor.get(
        "followed") else (base, {})
    # Counted after the watch: a run may have finished meanwhile.
    in_flight = runs_in_flight(context, topic)
    budgets = free_runs(in_flight, offsets.ends, policy)
    plan = plan_ranges(base, offsets.ends, offsets.beginnings, time.time(), policy, budgets,
                       room_left(in_flight, policy), claimed)
    if any(plan.cursor["partitions"][str(p)]["next"] < end for p, (_, end) in claimed.items()):
        plan.cursor["followed"] = True  # a claimed range not planned yet (no run free): looked at again
    return plan, in_flight


def followers_left(context: dg.SensorEvaluationContext, topic: str, cursor: dict,
                   offsets: Offsets) -> tuple[dict, dict[int, tuple[int, int]]]:
    """Where the followers that ended left each partition, as the range ledger and their claims say (their
    tags and the group's commit can lag it): the cursor, moved on to where the ledger accounts for every
    offset; and per partition a range claimed from there and not accounted for (a follower killed
    mid-range, its frames perhaps landed), for it to be planned with the same ends."""
    store = bound(context, "storage").open()
    generation, claimed = cursor.get("generation", 0), {}
    partitions = {p: dict(state) for p, state in cursor.get("partitions", {}).items()}
    for partition in sorted(offsets.ends):
        if (state := partitions.get(str(partition))) is None:
            continue
        position, claim, _ = resume(store, topic, partition, generation, state["next"], tidy=False)
        if position > state["next"]:
            state["next"], state["since"] = min(position, offsets.ends[partition]), None
        if claim is not None:
            claimed[partition] = (position, claim)
    return {**cursor, "partitions": partitions}, claimed


def missing_followers(context: dg.SensorEvaluationContext, topic: str, lanes: list[dg.DagsterRun],
                      cursor: dict, policy: BatchPolicy, offsets: Offsets) -> list[dg.RunRequest]:
    """The follow_frames runs to launch for as many to follow the topic as set (no more than its
    partitions). With none in flight, not while detect_frames ranges the sensor launched meanwhile are:
    the next goes on from where the group's commit says every offset is accounted for, so a range of
    theirs that failed is detected by the follower, and none while one of them still may land it."""
    wanted = min(policy.followers, len(offsets.ends)) - len(lanes)
    alone = [run.run_id for run in lanes if run.tags.get(SHARING_TAG) != "1"]
    if wanted <= 0:
        return []
    if alone:  # a follower from before followers shared the topic reads every partition outside the group
        context.log.info(f"follow_frames run {alone[0]} reads every partition of {topic} on its own (it "
                         "started before followers shared the topic): more start when it ends")
        return []
    if not lanes and (ranges := sum(runs_in_flight(context, topic).values())):
        context.log.info(f"{ranges} detect_frames runs of {topic} launched while no follower ran are in "
                         "flight: the followers start once they ended")
        return []
    return [follow_request(topic, cursor, policy, index, offsets.committed) for index in range(wanted)]


def follow_request(topic: str, cursor: dict, policy: BatchPolicy, index: int = 0,
                   committed: dict[int, int | None] | None = None) -> dg.RunRequest:
    """A follow_frames run from the cursor's next offsets on, or the group's commit where it is lower (a
    hole the run detects first); the sensor relaunches it, run retries do not. Followers launched at one
    tick end a minute apart (`index`), so the topic is never left to none while the next ones start."""
    generation = cursor.get("generation", 0)
    low = {str(p): offset for p, offset in (committed or {}).items() if offset is not None}
    starts = {p: min(state["next"], low.get(p, state["next"])) for p, state in cursor["partitions"].items()}
    run_s = policy.fast_lane_run_s + STAGGER_S * index
    config = {"topic": topic, "starts": starts, "run_s": run_s, "max_batch": policy.max_batch}
    if generation:
        config["generation"] = generation
    if policy.shed_after_s:
        config["shed_after_s"] = policy.shed_after_s
    return dg.RunRequest(
        run_key=f"follow-{topic}-g{generation}-" + "-".join(f"{p}.{o}" for p, o in sorted(starts.items()))
                + f"-{uuid.uuid4().hex[:12]}",
        job_name=follow_frames.name,
        run_config={"ops": {"follow": {"config": config}}},
        # Run monitoring ends a run that outlived its time by far (hung): the sensor launches the next.
        tags={FAST_LANE_TAG: topic, SHARING_TAG: "1", "dagster/max_retries": "0",
              "dagster/max_runtime": str(int(run_s + 600))},
    )
