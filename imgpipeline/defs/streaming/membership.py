"""Membership: the follow_frames runs of a topic share its partitions as one Kafka consumer group.

Each run joins the group `imgpipeline-detect.follow.<topic>` as a member that reads nothing through it
(its partitions stay paused): the group's coordinator gives each member its share of the partitions and,
when a run starts, ends, or stops answering (SIGKILL, a lost host: its session lapses after
SESSION_TIMEOUT_MS), hands the shares out again. A run reads its share's frames as before, a range at a
time from where the ledger accounts for every offset (a range claimed there and not accounted for first).

Before it claims a range, a run fences it: it commits the range's start to the group, which the
coordinator refuses from a member whose share was handed on (a run frozen past its session, then let
go). The share a run holds is only ever read by it: no range is read by two runs, but a claimed range
is read again with the same ends (the same landing files) by the partition's next owner.
"""

import time

import dagster as dg

from imgpipeline.resources import KafkaResource
from imgpipeline.resources.kafka import followers_group

# How long the group waits on a member that stopped answering before its share goes to the others: the
# broker's group.min.session.timeout.ms (6 s by default) at least. Heartbeats go every third of it.
SESSION_TIMEOUT_MS = 10_000


# The group shares out the partitions its members' metadata knows: a share made while the broker did not
# know the topic's partitions yet (the topic just made, or grown) was of none, and stayed so until the
# consumer's next metadata refresh (Kafka's default: 5 minutes). Refreshed this often, a change of the
# topic's partitions is shared out within seconds.
METADATA_MAX_AGE_MS = 5_000

# How long a poll waits while a rebalance is under way: kafka-python finishes a rejoin only in a poll that
# awaits it, and one that gave up on it mid-way starts it again in the next.
JOIN_WAIT_S = 1.0

# Errors of a commit that say the share went to another member (kafka-python gives a generation moved on,
# an unknown member or a rebalance under way as CommitFailedError): the partition is let go. Any other (a
# coordinator moving, a timeout) puts the range off a moment; a refusal fails the run.
HANDED_ON = ("CommitFailedError", "FencedInstanceIdError")


class Membership:
    """This run's membership of its topic's followers' group: the partitions it holds now."""

    def __init__(self, kafka: KafkaResource, topic: str, log: dg.DagsterLogManager | None = None):
        from kafka import ConsumerRebalanceListener

        membership = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                membership.held -= {tp.partition for tp in revoked}
                membership.settled = False

            def on_partitions_assigned(self, assigned):
                membership.consumer.pause(*assigned)  # the run reads them itself: nothing is fetched here
                membership.held |= {tp.partition for tp in assigned}
                membership.given |= {tp.partition for tp in assigned}
                membership.settled = True

            def on_partitions_lost(self, lost):
                self.on_partitions_revoked(lost)

        self.topic, self.log = topic, log
        self.held: set[int] = set()
        self.given: set[int] = set()  # assigned since given_again() was last asked
        self.settled = False  # a share given and no rebalance begun since
        self.troubled: str | None = None  # what the group's last call ran into (said once)
        self.consumer = kafka.consumer(group_id=followers_group(topic), auto_offset_reset="latest",
                                       session_timeout_ms=SESSION_TIMEOUT_MS,
                                       heartbeat_interval_ms=SESSION_TIMEOUT_MS // 3,
                                       metadata_max_age_ms=METADATA_MAX_AGE_MS)
        self.consumer.subscribe([topic], listener=Listener())

    def share(self, wait_s: float = 0.0) -> set[int] | None:
        """The partitions this run holds, once the group had `wait_s` to hand out shares; None while a
        rebalance is under way (it finishes in a later call: what the run holds then is kept, and read
        by no one meanwhile)."""
        from kafka.errors import GroupAuthorizationFailedError, KafkaError

        if not self.settled:  # a rejoin is finished only by a poll that waits for it
            wait_s = max(wait_s, JOIN_WAIT_S)
        try:
            self.consumer.poll(timeout_ms=int(wait_s * 1000), max_records=1)
        except GroupAuthorizationFailedError:
            group = followers_group(self.topic)
            raise dg.Failure(f"Kafka refuses this client the followers' group {group!r}: grant it READ on "
                             "that group (imgpipeline check names it)") from None
        except KafkaError as error:  # a rebalance failed, the coordinator away: the next call tries again
            self.trouble(f"{type(error).__name__}: {error}"[:300])
            time.sleep(max(wait_s, 0.1))
            return None
        self.trouble(None)
        self.mend_lost_join()
        return set(self.held) if self.settled else None

    def mend_lost_join(self) -> None:
        """kafka-python (3.0.12) loses a share that a change of the topic's partitions brought about when
        a poll's wait ran out while the rejoin was in flight: the leader's assignment already counts as
        done, so no later poll awaits the rejoin and this run would hold nothing until the group's next
        rebalance. Asked to rejoin, the next poll (which waits for it: the run holds nothing settled)
        joins afresh."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        if getattr(coordinator, "_join_task", None) is not None and not coordinator.need_rejoin():
            coordinator.request_rejoin()

    def given_again(self) -> set[int]:
        """The partitions the group assigned this run since it was last asked: each rebalance assigns
        them all again (eager), and one this run held before may have gone to another meanwhile."""
        given, self.given = self.given, set()
        return given

    def trouble(self, said: str | None) -> None:
        if said and said != self.troubled and self.log:
            self.log.warning(f"the followers' group: {said}")
        self.troubled = said

    def fence(self, partition: int, start: int) -> bool:
        """Whether the group still gives this run `partition`: the range's start committed as its
        member, which the coordinator refuses once its share went to another (the partition is then let
        go); False too when the commit could not be made for now."""
        from kafka import OffsetAndMetadata, TopicPartition
        from kafka.errors import AuthorizationError, KafkaError

        if partition not in self.held or not self.settled:
            return False
        try:
            self.consumer.commit({TopicPartition(self.topic, partition): OffsetAndMetadata(start, "", -1)})
        except KafkaError as error:
            if type(error).__name__ in HANDED_ON:
                self.held.discard(partition)
                if self.log:
                    self.log.info(f"partition {partition} is no longer this run's ({type(error).__name__}): "
                                  "another follower goes on with it")
            elif isinstance(error, AuthorizationError):
                group = followers_group(self.topic)
                raise dg.Failure(f"Kafka refuses this client a commit to the followers' group {group!r} "
                                 f"({type(error).__name__}): grant it READ on that group and the frames "
                                 "topic (imgpipeline check names them)") from None
            else:
                self.trouble(f"{type(error).__name__}: {error}"[:300])
                time.sleep(0.5)  # not spun on while frames wait
            return False
        return True

    def close(self) -> None:
        """Leave the group: the others take this run's share at once."""
        self.consumer.close()
