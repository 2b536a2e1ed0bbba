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

import json
import time

import dagster as dg
from pydantic import Field

from imgpipeline.defs.records.ledger import contiguous_end, read_ledger
from imgpipeline.defs.streaming.claims import claims_prefix, resume
from imgpipeline.defs.streaming.detect_frames import (
    PROGRESS_S,
    HandedOn,
    Lane,
    Screening,
    commit_accounted,
    detect_range,
    frame_processor,
    of_generation,
    peak_rss_mb,
)
from imgpipeline.defs.streaming.membership import Membership
from imgpipeline.defs.streaming.processing import Shedding, topic_id_of
from imgpipeline.defs.streaming.watch import Watch
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
# On a follow_frames run: how far it accounted for each partition's offsets from where it started
# ({"generation": N, "positions": {"0": offset, …}}), brought up to date every PROGRESS_S and at its end.
POSITIONS_TAG = "imgpipeline/fast-lane-positions"
# Seconds between looks at the topic's partitions and id (each asks the cluster).
TOPIC_CHECK_S = 30.0
# A pass gives the followers' group this long to hand out shares (0 would never let it), at most every
# SHARE_EVERY_S (a rebalance waits for it that long; each range is fenced whatever the pass).
SHARE_WAIT_S, SHARE_EVERY_S = 0.005, 0.25


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


class Superseded(Exception):
    """The run was cancelled: it ends, reading no further."""


class Follower:
    """One follow_frames run: its partitions' positions, and each range detected in turn."""

    def __init__(self, lane: Lane, config: FollowConfig, screening: Screening, membership: Membership):
        self.lane, self.config, self.membership = lane, config, membership
        self.positions: dict[int, int] = {}  # the partitions it holds: how far it accounted for each
        self.reached: dict[int, int] = {}  # the partitions it handed on: how far it had
        self.claimed: dict[int, int] = {}  # partition: the end of a claimed range to detect again first
        self.ahead: dict[int, list[tuple[int, int]]] = {}  # partition: ranges accounted past its position
        self.screening = screening
        self.landed: dict[int, tuple[int, dict]] = {}  # partition: (from offset, frames per event hour)
        self.shedding: dict[int, Shedding] = {}  # partition: its sources' one-in-k, kept between ranges
        self.totals: dict[str, int] = {}
        self.ranges = 0
        self.unreported = False  # ranges accounted for since the positions tag was last written
        self.progress_at = time.monotonic() + PROGRESS_S
        self.watch = Watch(config.observe_s)
        self.shared_at = time.monotonic() - SHARE_EVERY_S  # when the group was last asked for the share

    def refresh(self, wait_s: float = SHARE_WAIT_S, due: bool = False) -> bool:
        """Ask the group for the run's share (every SHARE_EVERY_S, or now if `due`) and hold it; False while
        a rebalance is under way: the run reads nothing until it is done."""
        if not due and time.monotonic() - self.shared_at < SHARE_EVERY_S:
            return self.membership.settled
        self.shared_at = time.monotonic()
        share = self.membership.share(wait_s)
        if share is not None:
            self.hold(share, again=self.membership.given_again())
        return share is not None

    def hold(self, share: set[int], again: set[int] = frozenset()) -> None:
        """Take up the partitions the group gave this run, and let go of those it gave another. One it
        holds and is given `again` (a rebalance) is taken up afresh from the ledger, as a new one: if the
        run's session lapsed meanwhile (frozen, starved), another run held it and went on."""
        if gone := sorted(set(self.positions) - share):
            self.let_go(gone)
            self.lane.context.log.info(f"partitions {gone} handed to another follower")
        was = {p: self.positions[p] for p in sorted(again & share) if p in self.positions}
        self.let_go(list(was))
        if new := sorted(share - set(self.positions)):
            self.start(new)
        for partition, position in sorted(was.items()):
            if self.positions[partition] != position:
                self.lane.context.log.warning(
                    f"partition {partition}: another run went on with it while this one was out of the group "
                    f"(its session lapsed): on from offset {self.positions[partition]}, not {position}")

    def let_go(self, partitions: list[int]) -> None:
        """Forget what the run kept of the partitions: how far it had goes to `reached`."""
        for partition in partitions:
            self.reached[partition] = self.positions.pop(partition)
            for kept in (self.claimed, self.ahead, self.landed, self.shedding):
                kept.pop(partition, None)

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
            position, claimed, ahead = resume(self.lane.store, topic, tp.partition, generation, floor)
            self.positions[tp.partition] = position
            if ahead:
                self.ahead[tp.partition] = ahead
                self.lane.context.log.info(
                    f"partition {tp.partition}: offsets {position}..{ahead[0][0] - 1} are not accounted for, "
                    f"{len(ahead)} ranges past them are: it detects the holes only")
            if claimed is not None:
                self.claimed[tp.partition] = claimed
                self.lane.context.log.info(
                    f"partition {tp.partition}: offsets {position}..{claimed - 1} were claimed by a run that "
                    "did not account for them: detecting them again first")
            self.reached.pop(tp.partition, None)
        self.commit_accounted_for(partitions)
        self.lane.context.log.info(
            f"following {topic}: " + ", ".join(f"partition {p} from {self.positions[p]}" for p in partitions))

    def commit_accounted_for(self, partitions: list[int]) -> None:
        """Move the group's commit of each partition as far as its ledger accounts for every offset: a run
        stopped between a range's ledger entry and its commit (told to stop, or SIGKILLed) left the commit
        behind, and no later range of the partition may come to move it. Done as a run takes partitions up
        and as it ends; one that cannot be made now is a warning (the partition's next range makes it)."""
        from kafka.errors import KafkaError

        lane, generation = self.lane, self.config.generation
        for partition in partitions:
            try:
                accounted = read_ledger(lane.store, lane.topic, partition, generation)
                commit_accounted(lane.consumer, accounted, lane.topic, partition, generation)
            except (KafkaError, OSError) as error:
                said = f"{type(error).__name__}: {error}"[:300]
                lane.context.log.warning(f"partition {partition}: the group's commit was not brought up to "
                                         f"its ledger ({said})")

    def step(self, ends: dict[int, int], until: float | None = None) -> bool:
        """Detect what is new in each partition (up to max_batch each, none once the monotonic `until` has
        passed, none once a rebalance began: the group waits for the run); whether anything was."""
        worked = False
        for partition in sorted(self.positions):
            if (until is not None and time.monotonic() >= until) or not self.refresh():
                break
            if partition not in self.positions:
                continue  # handed on meanwhile
            position = self.positions[partition]  # taken up again meanwhile: from the ledger
            end = ends.get(partition, position)
            if end < position:
                raise dg.Failure(
                    f"{self.lane.topic}-{partition}: offsets went backwards (the log ends at {end}, this run "
                    f"is at {position}): the topic was re-created; frames_sensor starts a new generation")
            limit = next((start for start, _ in self.ahead.get(partition, ()) if start > position), end)
            stop = self.claimed.get(partition) or min(end, position + self.config.max_batch, limit)
            if stop <= position:
                continue
            if self.detect(partition, position, stop):
                self.claimed.pop(partition, None)
                worked = True
            elif partition not in self.membership.held:  # its share went to another: let go of it
                self.hold(set(self.positions) - {partition})
        return worked

    def detect(self, partition: int, start: int, end: int) -> bool:
        """Claim and detect the range, if the group still gives the run its partition (whether it did)."""
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
        if not self.membership.fence(partition, start):
            return False  # handed on (this run was frozen past its session): the next owner reads the claim
        near = self.screening.near(lane.topic, partition, generation, start)
        shedding = self.shedding.setdefault(partition, Shedding(self.config.shed_after_s))
        try:  # fenced again before anything lands: a run frozen mid-range lands nothing its successor does
            counts, _ = detect_range(lane, partition, start, end, generation, shedding=shedding, near=near,
                                     landed=self.landed_for(partition, start), live=True,
                                     held=lambda: self.membership.fence(partition, start))
        except HandedOn as handed:
            # The frames screened as landed meanwhile did not land: the range is detected again (here or
            # by the next holder) against the landing as it is, not as this attempt would have left it.
            self.landed.pop(partition, None)
            lane.context.log.info(f"{handed}: it detects the range again from the claim")
            return False
        lane.store.delete_many([claim])
        self.watch.landed(counts.get("read", 0), shedding.take_appended())
        self.positions[partition] = self.past(partition, end)
        self.ranges, self.unreported = self.ranges + 1, True
        for name, value in counts.items():
            self.totals[name] = self.totals.get(name, 0) + value
        if time.monotonic() >= self.progress_at:
            self.progress_at = time.monotonic() + PROGRESS_S
            lane.context.log.info(f"{self.ranges} ranges, at {self.positions}: {self.totals}")
            self.report()
        return True

    def past(self, partition: int, end: int) -> int:
        """Where the partition goes on once [.., end) is accounted for: past the ranges accounted for ahead
        of it without a hole (those of a hole's far side)."""
        ahead = self.ahead.get(partition)
        if not ahead:
            return end
        position = contiguous_end(ahead, end)
        if not (rest := [(start, stop) for start, stop in ahead if stop > position]):
            self.ahead.pop(partition)
        else:
            self.ahead[partition] = rest
        return position

    def report(self) -> None:
        """The positions as the run's tag: where the sensor's cursor goes on from."""
        positions = {str(p): o for p, o in {**self.reached, **self.positions}.items()}
        value = json.dumps({"generation": self.config.generation, "positions": positions})
        self.lane.context.instance.add_run_tags(self.lane.context.run_id, {POSITIONS_TAG: value})
        self.unreported = False

    def landed_for(self, partition: int, start: int) -> dict:
        """The frames the partition's ranges screen against, kept between ranges (each adds its own) and
        read again from landing once the run is a screening window past where it read them."""
        since, landed = self.landed.get(partition, (start, {}))
        window = self.screening.window
        if window and start - since > window:
            since, landed = start, {}
        self.landed[partition] = (since, landed)
        return landed


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
        follower.commit_accounted_for(sorted(set(follower.positions) & membership.held))
    finally:
        membership.close()  # the other followers take its share at once
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
