"""follow_frames, the fast lane: one long-lived run detects every partition's new frames as they come.

A detect_frames run per batch waits for a sensor tick (every 5 s) and a run start (a second when
forked) before its first frame: seconds from send to landing however fast the detector. With the
fast lane on (BatchPolicy.fast_lane), frames_sensor instead keeps one follow_frames run of the frames
topic alive. It reads the partitions' end offsets and detects what is new as a range of its partition,
up to `max_batch` frames, exactly as a detect_frames run would (detect_range): landing files named after
the range, the ledger entry, the group's commit, the fold. Each range's landing is reported as a
materialization of the run. Idle, it waits on a fetch the broker answers as soon as a frame comes.

Before it reads a range the run claims it: `landing/claims/<topic>/<partition>/[g<N>/]<start>.json`
holds its end. A run that starts, whatever ended the one before it (SIGKILL, a lost machine, the
end of its time), goes on in each partition from where the range ledger accounts for every offset
from the sensor's cursor without a hole; a range claimed there and never accounted for is detected
again first with the same ends, so it rewrites the same landing files. The run queue starts one such
run of a topic at a time (the tag imgpipeline/fast-lane, limit 1 in dagster.yaml) and run retries
leave it to the sensor, so two never read the same offsets.

While it works, every `observe_s` (between passes over the partitions: under a backlog, a pass of a range
per partition) the run observes kafka_frames (an asset observation the Dagster UI charts): each
partition's position and lag, the frames read per second and how long they took from the broker to their
range being accounted for (p50, p95), and once more as it ends. Idle, it observes once a minute at most:
an hour of a run holds 3600 / `observe_s` observations at most.

The run ends after `run_s` (the sensor launches the next: one run's events stay a bounded page in the
UI), when the topic gains partitions (the next one follows them too), or when offsets go backwards
(the topic re-created: the sensor starts a new generation).
"""

import json
import time

import dagster as dg
from pydantic import Field

from imgpipeline.defs.records.ledger import accounted_ranges, contiguous_end
from imgpipeline.defs.streaming.detect_frames import (
    PROGRESS_S,
    Lane,
    Screening,
    detect_range,
    frame_processor,
    of_generation,
    peak_rss_mb,
)
from imgpipeline.defs.streaming.processing import Shedding, topic_id_of
from imgpipeline.defs.tables import TOPIC_ASSET
from imgpipeline.lib.stats import percentile
from imgpipeline.resources import (
    AlertsResource,
    DetectorResource,
    KafkaResource,
    StorageResource,
    TrackingResource,
)
from imgpipeline.resources.storage import BadObject, Storage

FAST_LANE_TAG = "imgpipeline/fast-lane"
# On a follow_frames run: how far it accounted for each partition's offsets from where it started
# ({"generation": N, "positions": {"0": offset, …}}), brought up to date every PROGRESS_S and at its end.
POSITIONS_TAG = "imgpipeline/fast-lane-positions"
CLAIMS = "landing/claims"
# Seconds between looks at the topic's partitions and id (each asks the cluster).
TOPIC_CHECK_S = 30.0
IDLE_OBSERVE_S = 60.0  # an idle follower's observation of kafka_frames comes this often at most


class FollowConfig(dg.Config):
    """Which topic to follow, from where, and for how long."""

    topic: str = Field(default="", description="Kafka topic; empty means the configured frames topic.")
    starts: dict[str, int] = Field(
        default={}, description="Per partition, the offset to follow from at least (the sensor's cursor "
                                "when it launched the run); a partition not named starts at the group's "
                                "commit, else at the log's beginning.")
    generation: int = 0
    max_batch: int = Field(default=500, ge=1, description="Frames per range at most (a backlog).")
    poll_s: float = Field(default=0.5, gt=0, description="Seconds an idle run's fetch waits for a new frame "
                                                         "before it looks again (it wakes as one comes).")
    run_s: float = Field(default=3600.0, ge=0, description="Seconds the run follows before it ends (0: on).")
    idle_end_s: float = Field(default=0.0, ge=0,
                              description="End after this many seconds without a new frame (0: never).")
    shed_after_s: float = Field(default=0.0, ge=0, description="As detect_frames' shed_after_s.")
    observe_s: float = Field(default=5.0, ge=1, description="Seconds between observations of kafka_frames "
                                                             "(positions, lag, frames/s, latency).")


def claims_prefix(topic: str, partition: int, generation: int = 0) -> str:
    return f"{CLAIMS}/{topic}/{partition}/" + (f"g{generation}/" if generation else "")


def resume(store: Storage, topic: str, partition: int, generation: int, floor: int) -> tuple[int, int | None]:
    """Where a run goes on in a partition: how far from `floor` the ledger accounts for every offset, and
    the end of a range claimed there and not accounted for (None: none). Older claims are deleted."""
    position = contiguous_end(accounted_ranges(store, topic, partition, generation), floor)
    prefix, claimed, stale = claims_prefix(topic, partition, generation), None, []
    for key in store.list(prefix):
        name = key[len(prefix):].removesuffix(".json")
        if not name.isdigit():
            continue
        if int(name) < position:
            stale.append(key)
        elif int(name) == position:
            claimed = claimed_end(store, key)
            if claimed is None:
                stale.append(key)
    store.delete_many(stale)
    return position, claimed if claimed is not None and claimed > position else None


def claimed_end(store: Storage, key: str) -> int | None:
    """A claim's end, or None when the claim cannot be read (damaged, or not a claim): its range is then
    detected as one of the run's own, and screening lands each frame the killed run landed once."""
    try:
        return int(json.loads(store.get(key))["end"])
    except (BadObject, ValueError, KeyError, TypeError):
        return None


class Superseded(Exception):
    """The run was cancelled: it ends, reading no further."""


class Follower:
    """One follow_frames run: its partitions' positions, and each range detected in turn."""

    def __init__(self, lane: Lane, config: FollowConfig, screening: Screening):
        self.lane, self.config = lane, config
        self.positions: dict[int, int] = {}
        self.claimed: dict[int, int] = {}  # partition: the end of a claimed range to detect again first
        self.screening = screening
        self.landed: dict[int, tuple[int, dict]] = {}  # partition: (from offset, frames per event hour)
        self.shedding: dict[int, Shedding] = {}  # partition: its sources' one-in-k, kept between ranges
        self.totals: dict[str, int] = {}
        self.ranges = 0
        self.progress_at = time.monotonic() + PROGRESS_S
        self.watch = Watch(config.observe_s)

    def start(self, partitions: list[int]) -> None:
        from kafka import TopicPartition

        consumer, topic, generation = self.lane.consumer, self.lane.topic, self.config.generation
        tps = [TopicPartition(topic, p) for p in partitions]
        beginnings = consumer.beginning_offsets(tps)
        for tp in tps:
            floor = self.config.starts.get(str(tp.partition))
            if floor is None:
                committed = of_generation(consumer.committed(tp, metadata=True), generation)
                floor = committed if committed is not None else beginnings[tp]
            position, claimed = resume(self.lane.store, topic, tp.partition, generation, floor)
            self.positions[tp.partition] = position
            if claimed is not None:
                self.claimed[tp.partition] = claimed
                self.lane.context.log.info(
                    f"partition {tp.partition}: offsets {position}..{claimed - 1} were claimed by a run that "
                    "did not account for them: detecting them again first")
        self.lane.context.log.info(f"following {topic} from {self.positions}")

    def step(self, ends: dict[int, int], until: float | None = None) -> bool:
        """Detect what is new in each partition (up to max_batch each, none once the monotonic `until` has
        passed); whether anything was."""
        worked = False
        for partition, position in sorted(self.positions.items()):
            if until is not None and time.monotonic() >= until:
                break
            end = ends.get(partition, position)
            if end < position:
                raise dg.Failure(
                    f"{self.lane.topic}-{partition}: offsets went backwards (the log ends at {end}, this run "
                    f"is at {position}): the topic was re-created; frames_sensor starts a new generation")
            stop = self.claimed.pop(partition, None) or min(end, position + self.config.max_batch)
            if stop > position:
                self.detect(partition, position, stop)
                worked = True
        return worked

    def detect(self, partition: int, start: int, end: int) -> None:
        lane, generation = self.lane, self.config.generation
        run = lane.context.instance.get_run_by_id(lane.context.run_id)
        if run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED):
            raise Superseded(f"the run is {run.status.value}")
        if run is not None and run.status != dg.DagsterRunStatus.STARTED:
            # Failed meanwhile (a worker that was frozen, then let go): the sensor has launched the next run,
            # which goes on from the ledger. This one reads no further.
            raise dg.Failure(f"this run is {run.status.value}: another follow_frames run takes over")
        claim = f"{claims_prefix(lane.topic, partition, generation)}{start}.json"
        lane.store.put(claim, json.dumps({"end": end, "run_id": lane.context.run_id}).encode())
        near = self.screening.near(lane.topic, partition, generation, start)
        shedding = self.shedding.setdefault(partition, Shedding(self.config.shed_after_s))
        counts, _ = detect_range(lane, partition, start, end, generation, shedding=shedding, near=near,
                                 landed=self.landed_for(partition, start), live=True)
        lane.store.delete_many([claim])
        self.watch.landed(counts.get("read", 0), shedding.take_appended())
        self.positions[partition] = end
        self.ranges += 1
        for name, value in counts.items():
            self.totals[name] = self.totals.get(name, 0) + value
        if time.monotonic() >= self.progress_at:
            self.progress_at = time.monotonic() + PROGRESS_S
            lane.context.log.info(f"{self.ranges} ranges, at {self.positions}: {self.totals}")
            self.report()

    def report(self) -> None:
        """The positions as the run's tag: where the sensor's cursor goes on from."""
        positions = {str(p): o for p, o in self.positions.items()}
        value = json.dumps({"generation": self.config.generation, "positions": positions})
        self.lane.context.instance.add_run_tags(self.lane.context.run_id, {POSITIONS_TAG: value})

    def landed_for(self, partition: int, start: int) -> dict:
        """The frames the partition's ranges screen against, kept between ranges (each adds its own) and
        read again from landing once the run is a screening window past where it read them."""
        since, landed = self.landed.get(partition, (start, {}))
        window = self.screening.window
        if window and start - since > window:
            since, landed = start, {}
        self.landed[partition] = (since, landed)
        return landed


class Watch:
    """What the follower shows of its work: the frames it read and their latencies (the broker's append to
    their range accounted for: landed, told and committed) since the last observation of kafka_frames,
    which comes every `every_s` while anything moved, else once a minute, and once more at the run's end."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self.frames, self.latencies = 0, []
        self.at = time.monotonic()
        self.shown: dict | None = None  # the positions and ends last observed
        self.ends: dict[int, int] = {}  # the partitions' ends last looked at

    def landed(self, frames: int, appended_ms: list[int]) -> None:
        """A range of `frames` was accounted for now, of frames the broker appended at `appended_ms`."""
        now = time.time()
        self.frames += frames
        self.latencies.extend(max(0.0, now - ms / 1000) for ms in appended_ms)

    def observation(self, positions: dict[int, int], ends: dict[int, int],
                    final: bool = False) -> dg.AssetObservation | None:
        """The observation due now, if one is; `final`: the run's last, if anything was read since."""
        elapsed = max(time.monotonic() - self.at, 1e-3)
        state = {"positions": dict(positions), "ends": {p: ends.get(p, o) for p, o in positions.items()}}
        self.ends = state["ends"]
        if final and not self.frames:
            return None
        if not final and (elapsed < self.every_s or (state == self.shown and elapsed < IDLE_OBSERVE_S)):
            return None
        lag = {p: max(0, state["ends"][p] - o) for p, o in positions.items()}
        metadata = {"lag": dg.MetadataValue.int(sum(lag.values())),
                    "frames_per_s": dg.MetadataValue.float(round(self.frames / elapsed, 2))}
        for p, offset in sorted(positions.items()):
            metadata[f"lag_partition_{p}"] = dg.MetadataValue.int(lag[p])
            metadata[f"position_partition_{p}"] = dg.MetadataValue.int(offset)
        if self.latencies:
            for name, q in (("landed_p50_s", 0.5), ("landed_p95_s", 0.95)):
                metadata[name] = dg.MetadataValue.float(round(percentile(self.latencies, q), 3))
        self.frames, self.latencies, self.at, self.shown = 0, [], time.monotonic(), state
        return dg.AssetObservation(asset_key=TOPIC_ASSET, metadata=metadata)


def follow(follower: Follower, config: FollowConfig) -> str:
    """Follow until the run's time is up, it idled `idle_end_s`, or the topic changed (new partitions,
    another id); why it ended."""
    from kafka import TopicPartition

    consumer, topic = follower.lane.consumer, follower.lane.topic
    partitions, topic_id = sorted(consumer.partitions_for_topic(topic) or []), topic_id_of(consumer, topic)
    if not partitions:
        raise dg.Failure(f"topic {topic!r} does not exist")
    follower.start(partitions)
    tps = [TopicPartition(topic, p) for p in partitions]
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
        ends = {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
        try:
            worked = follower.step(ends, until=began + config.run_s if config.run_s else None)
        except Superseded as exc:
            return str(exc)
        if observation := follower.watch.observation(follower.positions, ends):
            follower.lane.context.log_event(observation)
        if worked:
            idle_since = time.monotonic()
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
) -> dg.Output[dict]:
    """Detect every partition's new frames as they come, a range at a time, as detect_frames would. The
    listeners told of each range landed (the live alerts) read the tracking and the alert rules from the
    run's resources, as the hourly assets do."""
    store = storage.open()
    consumer = kafka.consumer(auto_offset_reset="none")
    follower = Follower(Lane(context, kafka, store, frame_processor(context, store, storage, detector),
                             consumer, config.topic or kafka.frames_topic), config, screening)
    try:
        try:
            why = follow(follower, config)
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
            if termination_requested(context):
                raise  # terminated from the UI or the CLI: Dagster marks it canceled
            # Its process told to stop (`imgpipeline dev` or `services down` stopped, a pod evicted): an end
            # like its time's, not a failure; a range under way is detected again from its claim.
            why = "its process was told to stop: the next run goes on from the ledger"
        if last := follower.watch.observation(follower.positions, follower.watch.ends, final=True):
            context.log_event(last)
    finally:
        consumer.close()
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
