"""A follow_frames run's work on its partitions (follow.py): the share the followers' group gives it, the
claims and ledger it resumes from, each range detected and accounted for, and its observations."""

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
    of_generation,
)
from imgpipeline.defs.streaming.landing import Landed
from imgpipeline.defs.streaming.membership import Membership
from imgpipeline.defs.streaming.processing import Shedding
from imgpipeline.defs.streaming.watch import Watch

# A pass gives the followers' group this long to hand out shares (0 would never let it), at most every
# SHARE_EVERY_S (a rebalance waits for it that long; each range is fenced whatever the pass).
SHARE_WAIT_S, SHARE_EVERY_S = 0.005, 0.25
# On a follow_frames run: how far it accounted for each partition's offsets from where it started
# ({"generation": N, "positions": {"0": offset, …}}), brought up to date every PROGRESS_S and at its end.
POSITIONS_TAG = "imgpipeline/fast-lane-positions"


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
        self.landed: dict[int, tuple[int, Landed]] = {}  # partition: (from offset, frames per event hour)
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

    def landed_for(self, partition: int, start: int) -> Landed:
        """The frames the partition's ranges screen against, kept between ranges (each adds its own) and
        read again from landing once the run is a screening window past where it read them."""
        since, landed = self.landed.get(partition) or (start, Landed())
        window = self.screening.window
        if window and start - since > window:
            since, landed = start, Landed()
        self.landed[partition] = (since, landed)
        return landed
