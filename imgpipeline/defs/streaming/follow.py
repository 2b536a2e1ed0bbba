"""follow_frames, the fast lane: long-lived runs detect their partitions' new frames as they come.

A detect_frames run per batch waits for a sensor tick (every 5 s) and a run start (a second when
forked) before its first frame: seconds from send to landing however fast the detector. With the
fast lane on (BatchPolicy.fast_lane), frames_sensor instead keeps `followers` follow_frames runs of the
frames topic alive, which share its partitions as a Kafka consumer group (membership.py). Each reads its
partitions' end offsets and detects what is new as a range of its partition,
up to `max_batch` frames, exactly as a detect_frames run would (detect_range): landing files named after
the range, the ledger entry, the group's commit, the fold. Each range's landing is reported as a
materialization of the run. Idle, it waits on a fetch the broker answers as soon as a frame comes.

Before it reads a range the run claims it: `landing/claims/<topic>/<partition>/[g<N>/]<start>.json`
holds its end. A run given a partition, whatever ended its holder before (SIGKILL, a lost machine, the
end of its time), goes on in it from where the range ledger accounts for every offset from the sensor's
cursor (or the group's commit, where lower) without a hole; a range claimed there and never accounted for
is detected again first with the same ends, so it rewrites the same landing files. Ranges accounted for
past the hole (detect_frames runs launched while no follower ran) are passed over. The group gives a
partition to one run at a time and fences each range (membership.py); run retries leave the runs to the
sensor, so two never read the same offsets.

While it works, every `observe_s` (between passes over the partitions: under a backlog, a pass of a range
per partition) the run observes kafka_frames (an asset observation the Dagster UI charts): each
partition's position and lag, the frames read per second and how long they took from the broker to their
range being accounted for (p50, p95), and once more as it ends. Idle, it observes once a minute at most:
an hour of a run holds 3600 / `observe_s` observations at most.

The run ends after `run_s` (the sensor launches the next: one run's events stay a bounded page in the
UI), when the topic gains partitions (the next one follows them too), or when offsets go backwards
(the topic re-created: the sensor starts a new generation).
"""

import time

import dagster as dg

from imgpipeline.defs.records.listeners import finish
from imgpipeline.defs.streaming.detect_frames import Lane, Screening, frame_processor, peak_rss_mb
from imgpipeline.defs.streaming.follower import FollowConfig, Follower, Superseded
from imgpipeline.defs.streaming.membership import Membership
from imgpipeline.defs.streaming.processing import topic_id_of
from imgpipeline.resources import (
    AlertsResource,
    DetectorResource,
    KafkaResource,
    StorageResource,
    TrackingResource,
)
from imgpipeline.resources.mqtt import MqttSettings

FAST_LANE_TAG = "imgpipeline/fast-lane"
# On a follow_frames run that shares its topic's partitions with the others (membership.py); a run without
# it (launched before they did) reads every partition.
SHARING_TAG = "imgpipeline/fast-lane-shares"
# Seconds between looks at the topic's partitions and id (each asks the cluster).
TOPIC_CHECK_S = 30.0


def follow(follower: Follower, config: FollowConfig) -> str:
    """Follow the partitions the group gives the run until its time is up, it idled `idle_end_s` (once it
    held a partition), or the topic changed (new partitions, another id); why it ended."""
    from kafka import TopicPartition

    consumer, topic = follower.lane.consumer, follower.lane.topic
    partitions, topic_id = sorted(consumer.partitions_for_topic(topic) or []), topic_id_of(consumer, topic)
    if not partitions:
        raise dg.Failure(f"topic {topic!r} does not exist")
    began = idle_since = looked = time.monotonic()
    troubled = None  # what the last wait for frames ran into (said once)
    while True:
        now = time.monotonic()
        if config.run_s and now - began >= config.run_s:
            return f"followed for {config.run_s:g} s: the sensor launches the next run"
        if now - looked >= TOPIC_CHECK_S:
            looked = now
            consumer.topics()  # asks the cluster: partitions and id as they are now
            if sorted(consumer.partitions_for_topic(topic) or []) != partitions:
                return "the topic has new partitions: the next run follows them too"
            if topic_id and topic_id_of(consumer, topic) not in (None, topic_id):
                return "the topic was re-created: the sensor starts a new generation"
        if not follower.refresh():  # a rebalance under way (or the group unreachable): waited for
            follower.refresh(config.poll_s, due=True)
            continue
        tps = [TopicPartition(topic, p) for p in sorted(follower.positions)]
        ends = {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()} if tps else {}
        try:
            worked = follower.step(ends, until=began + config.run_s if config.run_s else None)
        except Superseded as exc:
            return str(exc)
        if observation := follower.watch.observation(follower.positions, ends):
            follower.lane.context.log_event(observation)
        tps = [tp for tp in tps if tp.partition in follower.positions]  # the share may have moved mid-pass
        if not worked and follower.unreported:
            follower.report()  # fallen idle: how far it got, for the sensor and `imgpipeline status`
        if worked:
            idle_since = time.monotonic()
        elif not tps:  # holding nothing (more followers than partitions): it waits for a share
            follower.refresh(config.poll_s, due=True)
            idle_since = time.monotonic() if not follower.reached else idle_since
        elif config.idle_end_s and now - idle_since >= config.idle_end_s:
            return f"no new frame for {config.idle_end_s:g} s"
        elif (trouble := wait_for_frames(consumer, tps, follower.positions, config.poll_s)) != troubled:
            if trouble:
                follower.lane.context.log.warning(f"waiting for frames: {trouble}")
            troubled = trouble


def wait_for_frames(consumer, tps: list, positions: dict[int, int], wait_s: float) -> str | None:
    """Until a partition has a frame past its position, or `wait_s` passed: one fetch the broker holds
    until a frame comes (an idle run wakes as a frame comes, and costs the broker and itself next to
    nothing, where asking the end offsets every 50 ms cost 7% of a CPU). The record it fetched is read
    again with its range. What it ran into, if anything (a broker away, a permission refused)."""
    from kafka.errors import KafkaError

    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, positions[tp.partition])
    try:
        consumer.poll(timeout_ms=int(wait_s * 1000), max_records=1)
    except KafkaError as error:  # a position retention has deleted, a broker away: the next pass sees to it
        time.sleep(wait_s)
        return f"{type(error).__name__}: {error}"[:300]
    return None


@dg.op(name="follow", tags={"kind": "opencv"})
def follow_op(
    context: dg.OpExecutionContext,
    config: FollowConfig,
    kafka: KafkaResource,
    storage: StorageResource,
    detector: DetectorResource,
    screening: Screening,
    tracking: TrackingResource,
    alert_rules: AlertsResource,
    mqtt: MqttSettings,
) -> dg.Output[dict]:
    """Detect every partition's new frames as they come, a range at a time, as detect_frames would. The
    listeners told of each range landed (the live alerts, the cameras' snapshots on MQTT) read the
    tracking, the alert rules and MQTT from the run's resources, as the hourly assets do."""
    store = storage.open()
    consumer, topic = kafka.consumer(auto_offset_reset="none"), config.topic or kafka.frames_topic
    membership = Membership(kafka, topic, context.log)
    follower = Follower(Lane(context, kafka, store, frame_processor(context, store, storage, detector),
                             consumer, topic), config, screening, membership)
    stopped = True  # told to stop, or failed: the listeners' work under way is let go at once
    try:
        try:
            why, stopped = follow(follower, config), False
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
            if termination_requested(context):
                raise  # terminated from the UI or the CLI: Dagster marks it canceled
            # Its process told to stop (`imgpipeline dev` or `services down` stopped, a pod evicted): an end
            # like its time's, not a failure; a range under way is detected again from its claim.
            why = "its process was told to stop: the next run goes on from the ledger"
        if last := follower.watch.observation(follower.positions, follower.watch.ends, final=True):
            context.log_event(last)
        follower.commit_accounted_for(sorted(set(follower.positions) & membership.held))
    finally:
        membership.close()  # the other followers take its share at once
        consumer.close()
        finish(context, at_once=stopped)  # the live alerts' clips under way
        if follower.ranges:
            follower.report()
    context.log.info(f"done ({why}): {follower.ranges} ranges, {follower.totals}")
    return dg.Output(
        {"counts": follower.totals, "ranges": follower.ranges, "positions": follower.positions},
        metadata={"ranges": dg.MetadataValue.int(follower.ranges),
                  **{k: dg.MetadataValue.int(v) for k, v in follower.totals.items()},
                  "peak_rss_mb": dg.MetadataValue.float(peak_rss_mb())},
    )


def termination_requested(context: dg.OpExecutionContext) -> bool:
    """Whether someone asked Dagster to end the run (it is canceling)."""
    run = context.instance.get_run_by_id(context.run_id)
    return run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)


@dg.job(
    name="follow_frames",
    executor_def=dg.in_process_executor,
    description="The fast lane: detects every partition's new frames as they come, a range at a time "
                "(frames_sensor keeps one alive when the fast lane is on).",
)
def follow_frames():
    follow_op()
