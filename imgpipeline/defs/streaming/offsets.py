"""What a frames_sensor tick reads from the broker: end and beginning offsets per partition (never a
message body), the consumer group's commits, and offsets that went backwards.

The daemon evaluates sensors every 5 s at best. A tick that may launch a run watches the end
offsets for up to `watch_s` instead of returning at once: with nothing pending it waits for
new frames; while frames arrive at burst speed it waits for the burst to end (split evenly,
not a short first run) or to fill the runs it may launch; a slow trickle goes at once.
Frames wait for a run a fraction of a second, not up to a whole daemon loop.
"""

import math
import time
from dataclasses import dataclass, field

import dagster as dg

from imgpipeline import ConfigError
from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.detect_frames import of_generation
from imgpipeline.defs.streaming.processing import topic_id_of
from imgpipeline.defs.streaming.run_queries import free_runs, room_left, runs_in_flight
from imgpipeline.resources import KafkaResource


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
