"""frames_sensor: turns new Kafka offsets into detect_frames runs, reading offsets only.

The cursor holds the next offset per partition. A partition's pending range is launched
when it reaches `max_batch` frames or when its oldest pending offset has waited
`max_wait_s`; a backlog is split into `max_batch` ranges, or, when the partition's free runs
cannot take it so, evenly over those runs up to `max_backlog_batch` each. Small batches when
traffic is light (latency), large ones under backlog (throughput, and runs per hour that stop
growing with the frame rate).

Partitions are the unit of parallelism. Each has at most `runs_per_partition` runs queued or
running, counted by the run tag PARTITION_TAG: a busy partition cannot fill the run queue ahead of
a quiet one, and the queue (first in, first out, with a limit per partition value of that tag in
dagster.yaml) starts them side by side up to its own limit. A tick's requests alternate between
partitions.

The daemon evaluates sensors every 5 s at best. A tick that may launch a run watches the end
offsets for up to `watch_s` instead of returning at once: with nothing pending it waits for
new frames; while frames arrive at burst speed it waits for the burst to end (split evenly,
not a short first run) or to fill the runs it may launch; a slow trickle goes at once.
Frames wait for a run a fraction of a second, not up to a whole daemon loop.

With the fast lane on (`fast_lane`), it launches no ranges: it keeps one follow_frames run of the topic
alive (follow.py) and moves its cursor as far as that run accounted for the offsets.
"""

import json
import math
import time
from dataclasses import dataclass, field

import dagster as dg
from pydantic import BaseModel, ConfigDict, model_validator

from imgpipeline import ConfigError
from imgpipeline.defs.streaming.detect_frames import (
    PARTITION_TAG,
    detect_frames,
    detect_run_config,
    of_generation,
)
from imgpipeline.defs.streaming.follow import FAST_LANE_TAG, POSITIONS_TAG, follow_frames
from imgpipeline.defs.streaming.landing import range_name
from imgpipeline.defs.streaming.processing import topic_id_of
from imgpipeline.defs.tables import TOPIC_ASSET
from imgpipeline.defs.ticks import bound, tick_instance
from imgpipeline.resources import KafkaResource
from imgpipeline.resources.settings import FromEnv, setting

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
    return [run for run in runs if run.job_name == detect_frames.name]


# Settings that were renamed, with what to use instead: set, they stop `imgpipeline check` and `dev`.
RENAMED = {
    "IMGPIPELINE_MAX_RUNS_IN_FLIGHT": "IMGPIPELINE_RUNS_PER_PARTITION, which counts runs per partition of "
                                      "the frames topic, and IMGPIPELINE_TOTAL_RUNS_IN_FLIGHT, over all of "
                                      "them (twice dagster.yaml's max_concurrent_runs)",
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
    # Runs queued or running at once over all partitions: twice the run queue's slots (dagster.yaml:
    # max_concurrent_runs 2), one starting while one runs. Under a backlog of many partitions the frames
    # wait on the topic instead of in many small queued runs, and leave in larger runs as slots free.
    total_runs_in_flight: int = setting(
        "IMGPIPELINE_TOTAL_RUNS_IN_FLIGHT", 4,
        "detect_frames runs queued or running at once over all partitions (twice dagster.yaml's "
        "max_concurrent_runs): past it, frames wait on the topic and leave in larger runs as runs end; "
        "the partitions served longest ago go first", ge=1)
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
    # The fast lane (follow.py): one long-lived follow_frames run detects the topic's frames as they come,
    # instead of a detect_frames run per batch: landed within a second or two instead of five to seven.
    fast_lane: bool = setting(
        "IMGPIPELINE_FAST_LANE", False,
        "1: one follow_frames run detects every partition's new frames as they come (landed within ~1 s; it "
        "holds one of the run queue's slots for good); 0: a detect_frames run per batch (docs/streaming.md)",
        shown="`0`")
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


@dataclass
class Plan:
    ranges: list[tuple[int, int, int]] = field(default_factory=list)  # partition, start, end
    cursor: dict = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)


def plan_ranges(cursor: dict, ends: dict[int, int], beginnings: dict[int, int], now: float,
                policy: BatchPolicy, budgets: dict[int, int], room: int | None = None) -> Plan:
    """Pure planning: which offset ranges to launch now, and the next cursor.

    cursor: {"partitions": {"0": {"next": 12, "since": 1700000000.0, "served": 1700000000.0}}, "gaps": 0}
    budgets: runs each partition may still launch (absent: none); `room`: runs all of them may still
    launch together (None: no such limit), shared one at a time among the partitions ready to launch
    (a full batch pending, or waited long enough), those served longest ago first. The ranges come out
    alternating between partitions (each one's first, then each one's second …), the order the queue
    starts them.
    """
    partitions = {p: dict(v) for p, v in cursor.get("partitions", {}).items()}
    plan = Plan(cursor={**cursor, "partitions": partitions, "gaps": cursor.get("gaps", 0)})
    for partition in sorted(ends):
        state = partitions.setdefault(str(partition), {"next": beginnings[partition], "since": None})
        if state["next"] < beginnings[partition]:
            lost = beginnings[partition] - state["next"]
            plan.gaps.append(
                f"partition {partition}: offsets {state['next']}..{beginnings[partition] - 1} were "
                f"deleted by retention before processing ({lost} messages skipped)"
            )
            plan.cursor["gaps"] += lost
            state["next"], state["since"] = beginnings[partition], None
    if room is not None:
        wanting = [p for p in ends if ready(partitions[str(p)], ends[p], now, policy)]
        budgets = share_runs(budgets, room, sorted(
            wanting, key=lambda p: (partitions[str(p)].get("served", 0.0), p)))
    for partition in sorted(ends):
        state = partitions[str(partition)]
        pending = ends[partition] - state["next"]
        budget = budgets.get(partition, 0)
        batch = policy.batch_for(pending, budget)
        grown = batch > policy.max_batch  # the backlog split evenly: the last run takes what is left
        while budget > 0 and (pending >= batch or (grown and pending > 0)):
            size = min(batch, pending)
            plan.ranges.append((partition, state["next"], state["next"] + size))
            state["next"] += size
            pending -= size
            budget -= 1
            state["since"] = None
        if pending <= 0:
            state["since"] = None
            continue
        if state["since"] is None:
            state["since"] = now
        if now - state["since"] >= policy.max_wait_s and budget > 0:
            plan.ranges.append((partition, state["next"], ends[partition]))
            state["next"], state["since"] = ends[partition], None
            budget -= 1
    if room is not None:
        for partition in {r[0] for r in plan.ranges}:
            partitions[str(partition)]["served"] = now
    nth: dict[int, int] = {}
    ranked = []
    for r in plan.ranges:
        nth[r[0]] = nth.get(r[0], -1) + 1
        ranked.append((nth[r[0]], r))
    plan.ranges = [r for _, r in sorted(ranked)]
    return plan


def ready(state: dict, end: int, now: float, policy: BatchPolicy) -> bool:
    """Whether a partition would launch a run now: a full batch pending, or its oldest pending offset
    waited IMGPIPELINE_MAX_WAIT_S (a partition first seen pending now has waited 0 s)."""
    pending = end - state["next"]
    since = state["since"] if state.get("since") is not None else now
    return pending > 0 and (pending >= policy.max_batch or now - since >= policy.max_wait_s)


def share_runs(budgets: dict[int, int], room: int, wanting: list[int]) -> dict[int, int]:
    """Pure: `room` runs shared among the `wanting` partitions in their order, one each per round, none
    past its own budget."""
    shared = dict.fromkeys(budgets, 0)
    while room > 0:
        takers = [p for p in wanting if shared.get(p, 0) < budgets.get(p, 0)][:room]
        if not takers:
            break
        for partition in takers:
            shared[partition] += 1
        room -= len(takers)
    return shared


def watch_ends(read_ends, ends: dict[int, int], pending: int, policy: BatchPolicy,
               enough: int, poll_s: float = 0.2) -> dict[int, int]:
    """End offsets once a burst has arrived: watched for up to `policy.watch_s`.

    With nothing pending, it waits for the first new frames. It keeps watching while frames
    arrive at burst speed (`burst_fps` over the last `settle_s`), so a backlog being produced is
    seen whole; a steady trickle, a burst that has ended, or `enough` frames end the watch.
    """
    deadline = time.monotonic() + policy.watch_s
    window = max(1, math.ceil(policy.settle_s / poll_s))  # polls
    base = sum(ends.values())
    totals = [base]  # one per poll, from the burst's first frames
    arrived = pending > 0
    while time.monotonic() + poll_s < deadline:
        time.sleep(poll_s)
        ends = read_ends()
        total = sum(ends.values())
        if total - base + pending >= enough:
            break
        if not arrived:
            arrived = total > base
            totals = [total]
            continue
        totals.append(total)
        if len(totals) > window and totals[-1] - totals[-1 - window] < policy.burst_fps * window * poll_s:
            break
    return ends


def active_runs(context: dg.SensorEvaluationContext) -> list[dg.DagsterRun]:
    """The runs queued or running."""
    return tick_instance(context).get_runs(dg.RunsFilter(statuses=ACTIVE))


# After follow_frames runs failed one after the other, the next waits this long, doubled for each
# further failure, up to LANE_BACKOFF_MAX_S: a range that fails every time is tried again, not in a loop.
LANE_BACKOFF_S = 10.0
LANE_BACKOFF_MAX_S = 300.0


def lane_backoff(context: dg.SensorEvaluationContext, topic: str, now: float) -> str | None:
    """Why the next follow_frames run of `topic` waits (its predecessors failed, the last one lately), or
    None. The first failure is taken over at once: a killed worker loses a tick, not minutes."""
    records = tick_instance(context).get_run_records(
        dg.RunsFilter(job_name=follow_frames.name, tags={FAST_LANE_TAG: topic}), limit=8)
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


def followers(active: list[dg.DagsterRun], topic: str) -> list[dg.DagsterRun]:
    """The follow_frames runs of `topic` queued or running."""
    return [run for run in active
            if run.job_name == follow_frames.name and run.tags.get(FAST_LANE_TAG) == topic]


def free_runs(in_flight: dict[int, int], partitions, policy: BatchPolicy) -> dict[int, int]:
    """Runs each partition may still launch."""
    return {p: max(0, policy.runs_per_partition - in_flight.get(p, 0)) for p in partitions}


def room_left(in_flight: dict[int, int], policy: BatchPolicy) -> int:
    """Runs all partitions may still launch together."""
    return max(0, policy.total_runs_in_flight - sum(in_flight.values()))


def run_request(topic: str, partition: int, start: int, end: int, generation: int = 0,
                shed_after_s: float = 0.0) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=range_name(topic, partition, start, end, generation),
        job_name=detect_frames.name,
        run_config=detect_run_config(topic, partition, start, end, generation, shed_after_s),
        tags={PARTITION_TAG: f"{topic}-{partition}"},
    )


def detect_reset(cursor: dict, ends: dict[int, int], beginnings: dict[int, int],
                 topic_id: str | None) -> list[str]:
    """Offsets that went backwards (the topic re-created, or moved to a new cluster): the cursor
    starts over on the new log in a new generation, and each reset is said in a warning.

    The topic's id tells a re-created topic even when its new log has passed the old cursor; a
    partition whose end is below the cursor tells it on a cluster that gives no id.
    """
    partitions = cursor.setdefault("partitions", {})
    known_id = cursor.get("topic_id")
    if topic_id and known_id and topic_id != known_id:
        reset = sorted(int(p) for p in partitions)
        why = f"the topic was re-created (id {known_id} → {topic_id})"
    else:
        reset = sorted(p for p in ends if str(p) in partitions and ends[p] < partitions[str(p)]["next"])
        why = "its log ends below the next offset the sensor expected"
    if topic_id:
        cursor["topic_id"] = topic_id
    if not reset:
        return []
    cursor["generation"] = cursor.get("generation", 0) + 1
    warnings = []
    for p in reset:
        old = partitions[str(p)]["next"]
        partitions[str(p)] = {"next": beginnings.get(p, 0), "since": None}
        warnings.append(f"partition {p}: offsets went backwards ({why}; expected {old}, the log now ends "
                        f"at {ends.get(p, 0)}): starting over at {beginnings.get(p, 0)} as generation "
                        f"{cursor['generation']}, whose run keys and landing files end in "
                        f"-g{cursor['generation']}")
    return warnings


@dataclass
class Offsets:
    """What a tick read from the broker: end and beginning offsets per partition."""

    ends: dict[int, int]
    beginnings: dict[int, int]
    topic_id: str | None = None
    committed: dict[int, int | None] = field(default_factory=dict)  # the group's, read for the fast lane


def read_offsets(context: dg.SensorEvaluationContext, kafka: KafkaResource, cursor: dict,
                 policy: BatchPolicy) -> Offsets | dg.SkipReason:
    """End offsets (watched for a burst when a run may be launched) and beginnings; cursor gains
    the partitions it did not know, from the consumer group's commits."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    topic = kafka.frames_topic
    try:
        consumer = kafka.consumer()
    except ConfigError as exc:
        return dg.SkipReason(f"Kafka unreachable, tick skipped: {exc}")
    try:
        ids = consumer.partitions_for_topic(topic)
        if not ids:
            return dg.SkipReason(f"topic {topic!r} does not exist yet")
        tps = [TopicPartition(topic, p) for p in sorted(ids)]

        def read_ends() -> dict[int, int]:
            return {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}

        ends = read_ends()
        beginnings = {tp.partition: o for tp, o in consumer.beginning_offsets(tps).items()}
        for warning in detect_reset(cursor, ends, beginnings, topic_id_of(consumer, topic)):
            context.log.warning(warning)
        known = cursor.setdefault("partitions", {})
        for tp in tps:
            if str(tp.partition) not in known:
                # A new partition starts where the consumer group left off, if anywhere.
                committed = of_generation(consumer.committed(tp, metadata=True), cursor.get("generation", 0))
                if committed is not None:
                    known[str(tp.partition)] = {"next": committed, "since": None}
        if policy.fast_lane or cursor.get("followed"):  # how far the fast lane got; it needs no watch
            generation = cursor.get("generation", 0)
            committed = {tp.partition: of_generation(consumer.committed(tp, metadata=True), generation)
                         for tp in tps}
            return Offsets(ends, beginnings, cursor.get("topic_id"), committed)
        pending = sum(ends[p] - max(known.get(str(p), {}).get("next", 0), beginnings[p]) for p in ends)
        if policy.watch_s > 0:
            in_flight = runs_in_flight(context, topic)
            free = min(sum(free_runs(in_flight, ends, policy).values()), room_left(in_flight, policy))
            enough = free * policy.max_batch
            if free and pending < enough:
                ends = watch_ends(read_ends, ends, pending, policy, enough)
        return Offsets(ends, beginnings, cursor.get("topic_id"))
    except KafkaError as exc:
        return dg.SkipReason(f"Kafka error, tick skipped: {type(exc).__name__}: {exc}")
    finally:
        consumer.close()


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


def sensor_description(policy: BatchPolicy) -> str:
    return (
        f"Launches detect_frames over new offsets of the frames topic: up to {policy.max_batch} "
        f"frames per run, or fewer once the oldest has waited {policy.max_wait_s:g} s. "
        f"A tick watches for a burst of new frames for up to {policy.watch_s:g} s. At most "
        f"{policy.runs_per_partition} runs of a partition and {policy.total_runs_in_flight} in all are "
        "queued or running; past that, frames wait on the topic and leave in larger runs. "
        + ("The fast lane is on: one follow_frames run detects the topic's frames as they come instead."
           if policy.fast_lane else "")
    ).strip()


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
                                 "(IMGPIPELINE_FAST_LANE is off now): detect_frames runs go on where it ends")
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


def lane_positions(context: dg.SensorEvaluationContext, topic: str, lanes: list[dg.DagsterRun],
                   cursor: dict) -> dict[int, int]:
    """How far the follow_frames run in flight (else the latest) accounted for each partition, as its tag
    says, if of the cursor's generation."""
    runs = lanes or tick_instance(context).get_runs(
        dg.RunsFilter(job_name=follow_frames.name, tags={FAST_LANE_TAG: topic}), limit=1)
    try:
        said = json.loads(runs[0].tags.get(POSITIONS_TAG, "{}")) if runs else {}
        if said.get("generation", 0) != cursor.get("generation", 0):
            return {}
        return {int(p): int(o) for p, o in said.get("positions", {}).items()}
    except (ValueError, TypeError, AttributeError):  # a tag edited by hand: the commit alone says
        return {}


def follow_plan(cursor: dict, offsets: Offsets, following: bool, positions: dict[int, int]) -> Plan:
    """Pure: with the fast lane, each partition's next offset is where the follow_frames runs accounted for
    every offset, as the consumer group's commit or the runs' `positions` say; no ranges. Off again
    (`following` False), the cursor takes that once, for ranges to be planned from there."""
    partitions = {p: dict(v) for p, v in cursor.get("partitions", {}).items()}
    for partition in sorted(offsets.ends):
        state = partitions.setdefault(str(partition), {"next": offsets.beginnings[partition], "since": None})
        reached = max(offsets.committed.get(partition) or 0, positions.get(partition, 0))
        if reached > state["next"]:  # past the log's end: the next tick's reset check says so
            state["next"], state["since"] = reached, None
    plan = Plan(cursor={**cursor, "partitions": partitions, "gaps": cursor.get("gaps", 0)})
    plan.cursor.pop("followed", None)
    if following:
        plan.cursor["followed"] = True
    return plan


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
