"""frames_sensor on the real broker: batching, backlog, gaps, missing topics, dead brokers."""

from __future__ import annotations

import json
import threading
import time

import dagster as dg
import pytest

from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.frames_sensor import build_frames_sensor
from imgpipeline.defs.streaming.planning import plan_ranges
from imgpipeline.resources import KafkaResource
from imgpipeline.services.process import free_port
from imgpipeline_tests.instances import fresh_instance

pytestmark = pytest.mark.instance


def tick(kafka, instance, policy, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"kafka": kafka})
    return build_frames_sensor(policy)(context)


def fill(kafka, count, partition=0):
    producer = kafka.producer()
    for i in range(count):
        producer.send(kafka.frames_topic, value=b"x%d" % i, partition=partition)
    producer.flush()
    producer.close()


def test_plan_splits_backlog_and_waits_for_small_batches():
    policy = BatchPolicy(fast_lane=False, max_batch=100, max_wait_s=5, watch_s=0)
    plan = plan_ranges({}, {0: 250, 1: 30}, {0: 0, 1: 0}, now=1000.0, policy=policy, budgets={0: 10, 1: 10})
    assert plan.ranges == [(0, 0, 100), (0, 100, 200)]
    assert plan.cursor["partitions"] == {"0": {"next": 200, "since": 1000.0},
                                         "1": {"next": 0, "since": 1000.0}}
    later = plan_ranges(plan.cursor, {0: 250, 1: 30}, {0: 0, 1: 0}, now=1005.0, policy=policy,
                        budgets={0: 10, 1: 10})
    assert later.ranges == [(0, 200, 250), (1, 0, 30)]
    fixed = BatchPolicy(fast_lane=False, max_batch=100, max_backlog_batch=100, max_wait_s=5, watch_s=0)
    limited = plan_ranges({}, {0: 1000}, {0: 0}, now=0.0, policy=fixed, budgets={0: 3})
    assert limited.ranges == [(0, 0, 100), (0, 100, 200), (0, 200, 300)]
    assert limited.cursor["partitions"]["0"]["next"] == 300


def test_a_backlog_grows_the_runs_up_to_their_cap():
    """More frames than a partition's free runs take at max_batch: split evenly over those runs, each at
    most max_backlog_batch; what is left waits for the next runs."""
    policy = BatchPolicy(fast_lane=False, max_batch=100, max_backlog_batch=400, max_wait_s=5, watch_s=0)
    even = plan_ranges({}, {0: 1000}, {0: 0}, now=0.0, policy=policy, budgets={0: 3})
    assert even.ranges == [(0, 0, 334), (0, 334, 668), (0, 668, 1000)]
    assert even.cursor["partitions"]["0"] == {"next": 1000, "since": None}
    capped = plan_ranges({}, {0: 1000}, {0: 0}, now=0.0, policy=policy, budgets={0: 2})
    assert capped.ranges == [(0, 0, 400), (0, 400, 800)]
    assert capped.cursor["partitions"]["0"] == {"next": 800, "since": 0.0}
    # What fits the free runs at max_batch is not grown.
    small = plan_ranges({}, {0: 250}, {0: 0}, now=0.0, policy=policy, budgets={0: 3})
    assert small.ranges == [(0, 0, 100), (0, 100, 200)]


def test_plan_gives_each_partition_its_own_runs_in_turn():
    """A busy partition's backlog does not take a quiet partition's turn: each has its own budget, and
    the ranges alternate (the order the run queue starts them)."""
    policy = BatchPolicy(fast_lane=False, max_batch=100, max_backlog_batch=100, max_wait_s=0, watch_s=0)
    ends, beginnings = {0: 1000, 1: 30, 2: 250, 3: 0}, {0: 0, 1: 0, 2: 0, 3: 0}
    plan = plan_ranges({}, ends, beginnings, now=0.0, policy=policy, budgets={0: 2, 1: 2, 2: 2, 3: 2})
    assert plan.ranges == [(0, 0, 100), (1, 0, 30), (2, 0, 100), (0, 100, 200), (2, 100, 200)]
    # Partition 0's runs all busy: the others still go, and 0 waits where it was.
    busy = plan_ranges({}, ends, beginnings, now=0.0, policy=policy, budgets={0: 0, 1: 2, 2: 1, 3: 2})
    assert busy.ranges == [(1, 0, 30), (2, 0, 100)]
    assert busy.cursor["partitions"]["0"]["next"] == 0 and busy.cursor["partitions"]["2"]["next"] == 100


def test_runs_in_flight_over_all_partitions_are_shared_in_turn_and_grow():
    """Past the room left over all partitions, frames wait on the topic: the room goes one run at a time
    to the partitions with frames pending, those served longest ago first, and each run takes the
    partition's backlog whole (up to max_backlog_batch) instead of a max_batch slice."""
    policy = BatchPolicy(fast_lane=False, max_batch=100, max_backlog_batch=400, max_wait_s=0, watch_s=0)
    ends, beginnings = {0: 300, 1: 1000, 2: 50, 3: 0}, dict.fromkeys(range(4), 0)
    budgets = dict.fromkeys(range(4), 2)
    first = plan_ranges({}, ends, beginnings, now=10.0, policy=policy, budgets=budgets, room=2)
    assert first.ranges == [(0, 0, 300), (1, 0, 400)]
    assert {p: s.get("served") for p, s in first.cursor["partitions"].items()} == {
        "0": 10.0, "1": 10.0, "2": None, "3": None}
    # The next tick: partition 2, never served, goes before 0 and 1; partition 3 has nothing pending.
    later = {0: 600, 1: 1000, 2: 50, 3: 0}
    second = plan_ranges(first.cursor, later, beginnings, now=20.0, policy=policy, budgets=budgets, room=2)
    assert second.ranges == [(0, 300, 600), (2, 0, 50)]
    third = plan_ranges(second.cursor, later, beginnings, now=30.0, policy=policy, budgets=budgets, room=3)
    assert third.ranges == [(1, 400, 700), (1, 700, 1000)]  # 1 waited longest; 0 and 2 have nothing left
    assert plan_ranges(third.cursor, later, beginnings, now=40.0, policy=policy, budgets=budgets,
                       room=0).ranges == []


def test_the_room_goes_to_partitions_ready_to_launch():
    """A partition whose few frames still wait for IMGPIPELINE_MAX_WAIT_S takes none of the room: a
    partition with a full batch does, and the waiting one goes once its wait is over."""
    policy = BatchPolicy(fast_lane=False, max_batch=100, max_backlog_batch=100, max_wait_s=10, watch_s=0)
    ends, beginnings, budgets = {0: 30, 1: 100}, {0: 0, 1: 0}, {0: 2, 1: 2}
    first = plan_ranges({}, ends, beginnings, now=0.0, policy=policy, budgets=budgets, room=1)
    assert first.ranges == [(1, 0, 100)]
    assert first.cursor["partitions"]["0"] == {"next": 0, "since": 0.0}
    later = {0: 30, 1: 200}
    waiting = plan_ranges(first.cursor, later, beginnings, now=5.0, policy=policy, budgets=budgets, room=1)
    assert waiting.ranges == [(1, 100, 200)]
    due = plan_ranges(waiting.cursor, {0: 30, 1: 300}, beginnings, now=10.0, policy=policy, budgets=budgets,
                      room=1)
    assert due.ranges == [(0, 0, 30)]  # waited 10 s, and served longer ago than partition 1


def test_a_range_a_follower_claimed_goes_first_with_the_claims_ends():
    """A range a follow_frames run claimed and left unaccounted for is planned first with its own ends,
    whatever the batch size and the wait; with no run free nothing of its partition is, and it takes a
    share of the room before partitions whose frames still wait."""
    policy = BatchPolicy(fast_lane=False, max_batch=100, max_backlog_batch=100, max_wait_s=10, watch_s=0)
    cursor = {"partitions": {"0": {"next": 40, "since": None}, "1": {"next": 0, "since": None}}, "gaps": 0}
    ends, beginnings = {0: 400, 1: 50}, {0: 0, 1: 0}
    plan = plan_ranges(cursor, ends, beginnings, now=0.0, policy=policy, budgets={0: 3, 1: 1},
                       claimed={0: (40, 47)})
    assert plan.ranges == [(0, 40, 47), (0, 47, 147), (0, 147, 247)]
    assert plan_ranges(cursor, ends, beginnings, now=0.0, policy=policy, budgets={0: 0, 1: 1},
                       claimed={0: (40, 47)}).ranges == []
    assert plan_ranges(cursor, ends, beginnings, now=0.0, policy=policy, budgets={0: 2, 1: 1}, room=1,
                       claimed={0: (40, 47)}).ranges == [(0, 40, 47)]
    # Retention deleted its first offsets: still planned with its ends (the run reads the cut as a gap).
    cut = plan_ranges(cursor, ends, {0: 45, 1: 0}, now=0.0, policy=policy, budgets={0: 1, 1: 0},
                      claimed={0: (40, 47)})
    assert cut.ranges == [(0, 40, 47)] and cut.cursor["gaps"] == 5


def test_plan_skips_offsets_deleted_by_retention():
    plan = plan_ranges({"partitions": {"0": {"next": 10, "since": None}}, "gaps": 0}, {0: 60}, {0: 40},
                       now=0.0, policy=BatchPolicy(fast_lane=False,
                                                   max_batch=100, max_wait_s=0, watch_s=0), budgets={0: 5})
    assert plan.ranges == [(0, 40, 60)]
    assert plan.cursor["gaps"] == 30
    assert "offsets 10..39 were deleted by retention" in plan.gaps[0]


@pytest.mark.integration
def test_sensor_batches_a_backlog_into_ranges(kafka):
    fill(kafka, 250)
    policy = BatchPolicy(fast_lane=False, max_batch=100, max_wait_s=3600, runs_per_partition=10, watch_s=0)
    with fresh_instance() as instance:
        result = tick(kafka, instance, policy)
        keys = [r.run_key for r in result.run_requests]
        assert keys == [f"{kafka.frames_topic}-0-0-100", f"{kafka.frames_topic}-0-100-200"]
        config = result.run_requests[0].run_config["ops"]["detect"]["config"]
        assert config == {"topic": kafka.frames_topic, "partition": 0, "start_offset": 0, "end_offset": 100}
        cursor = json.loads(result.cursor)
        assert cursor["partitions"]["0"]["next"] == 200 and cursor["lag"] == {"0": 50, "1": 0}
        # Nothing new and the wait not over: the remainder waits.
        again = tick(kafka, instance, policy, cursor=result.cursor)
        assert not getattr(again, "run_requests", None)
        # The lag is observed on the kafka_frames asset.
        observation = result.asset_events[0]
        assert observation.asset_key == dg.AssetKey("kafka_frames")
        assert observation.metadata["unlaunched_lag"].value == 50


@pytest.mark.integration
def test_idle_tick_watches_for_a_burst_and_launches_it_whole(kafka):
    policy = BatchPolicy(fast_lane=False,
                         max_batch=100, max_wait_s=0, runs_per_partition=2, watch_s=4, settle_s=1.5)
    with fresh_instance() as instance:
        quiet = tick(kafka, instance, policy)  # watches, sees nothing
        assert not quiet.run_requests

        def keys_of_tick_during_burst(cursor, delay_s):
            """A tick while 150 frames arrive in three parts, starting `delay_s` into it."""
            def burst():
                for _ in range(3):
                    fill(kafka, 50)
                    time.sleep(0.1)  # scenario: the burst comes in parts

            sender = threading.Timer(delay_s, burst)
            sender.start()
            result = tick(kafka, instance, policy, cursor=cursor)
            sender.join()
            return result, [r.run_key.removeprefix(f"{kafka.frames_topic}-0-") for r in result.run_requests]

        result, keys = keys_of_tick_during_burst(quiet.cursor, 0.5)
        assert keys == ["0-100", "100-150"]
        # A tick that starts in the middle of a burst waits for the rest of it too.
        fill(kafka, 50)
        _, keys = keys_of_tick_during_burst(result.cursor, 0.2)
        assert keys == ["150-250", "250-350"]


@pytest.mark.integration
def test_sensor_respects_runs_in_flight(kafka):
    fill(kafka, 500)
    policy = BatchPolicy(fast_lane=False,
                         max_batch=100, max_backlog_batch=100, max_wait_s=0, runs_per_partition=2, watch_s=0)
    with fresh_instance() as instance:
        result = tick(kafka, instance, policy)
        assert len(result.run_requests) == 2
        assert json.loads(result.cursor)["partitions"]["0"]["next"] == 200


@pytest.mark.integration
def test_runs_in_flight_are_counted_per_partition(kafka):
    """Runs queued or running hold their own partition's budget only; finished runs and other topics'
    runs hold none."""
    from imgpipeline.defs.streaming.detect_frames import PARTITION_TAG, detect_frames

    fill(kafka, 300, partition=0)
    fill(kafka, 300, partition=1)
    policy = BatchPolicy(fast_lane=False,
                         max_batch=100, max_backlog_batch=100, max_wait_s=0, runs_per_partition=2, watch_s=0)
    with fresh_instance() as instance:
        def run(tag: str):
            return instance.create_run_for_job(detect_frames, tags={PARTITION_TAG: tag})  # NOT_STARTED

        run(f"{kafka.frames_topic}-0")
        run(f"{kafka.frames_topic}-0")
        run(f"{kafka.frames_topic}-1")
        instance.report_run_failed(run(f"{kafka.frames_topic}-1"))  # finished: holds nothing
        run("another-topic-1")
        result = tick(kafka, instance, policy)
        # Partition 0 has its 2; partition 1 may launch one more; the other topic's run counts nowhere.
        assert [r.run_key for r in result.run_requests] == [f"{kafka.frames_topic}-1-0-100"]


@pytest.mark.integration
def test_new_partitions_and_retention_gaps(kafka):
    fill(kafka, 40)
    policy = BatchPolicy(fast_lane=False, max_batch=100, max_wait_s=0, runs_per_partition=10, watch_s=0)
    with fresh_instance() as instance:
        first = tick(kafka, instance, policy)
        assert [r.run_key for r in first.run_requests] == [f"{kafka.frames_topic}-0-0-40"]

        from kafka import TopicPartition
        from kafka.admin import NewPartitions

        fill(kafka, 30)  # offsets 40..69, then retention deletes up to 60
        admin = kafka.admin()
        try:
            admin.delete_records({TopicPartition(kafka.frames_topic, 0): 60})
            admin.create_partitions({kafka.frames_topic: NewPartitions(total_count=3)})
        finally:
            admin.close()
        fill(kafka, 5, partition=2)
        second = tick(kafka, instance, policy, cursor=first.cursor)
        assert sorted(r.run_key for r in second.run_requests) == [
            f"{kafka.frames_topic}-0-60-70", f"{kafka.frames_topic}-2-0-5"]
        cursor = json.loads(second.cursor)
        assert cursor["gaps"] == 20
        assert set(cursor["partitions"]) == {"0", "1", "2"}


@pytest.mark.integration
def test_missing_topic_and_dead_broker_skip_the_tick(services):
    with fresh_instance() as instance:
        missing = KafkaResource(bootstrap_servers=services.kafka.address(services.kafka.ports),
                                frames_topic="no-such-topic")
        result = tick(missing, instance, BatchPolicy(fast_lane=False, watch_s=0))
        assert "topic 'no-such-topic' does not exist yet" in result.skip_message
        dead = KafkaResource(bootstrap_servers=f"127.0.0.1:{free_port()}", connect_timeout_s=1)
        result = tick(dead, instance, BatchPolicy(fast_lane=False, watch_s=0))
        assert result.skip_message.startswith("Kafka unreachable, tick skipped: cannot reach Kafka")


def test_offsets_going_backwards_start_a_new_generation():
    from imgpipeline.defs.streaming.frames_sensor import run_request
    from imgpipeline.defs.streaming.offsets import detect_reset

    cursor = {"partitions": {"0": {"next": 500, "since": None}, "1": {"next": 40, "since": None}},
              "topic_id": "a"}
    # The same topic, one partition's log now ends below the cursor (moved to a new cluster).
    warnings = detect_reset(cursor, {0: 12, 1: 60}, {0: 0, 1: 0}, "a")
    assert len(warnings) == 1 and "partition 0: offsets went backwards" in warnings[0]
    assert cursor["generation"] == 1 and cursor["partitions"]["0"] == {"next": 0, "since": None}
    assert cursor["partitions"]["1"]["next"] == 40
    # A re-created topic (a new id) starts every partition over, even past the old cursor.
    warnings = detect_reset(cursor, {0: 900, 1: 900}, {0: 0, 1: 0}, "b")
    assert len(warnings) == 2 and "re-created" in warnings[0] and cursor["generation"] == 2
    assert detect_reset(cursor, {0: 900, 1: 900}, {0: 0, 1: 0}, "b") == []
    # Reused offsets get run keys and landing names of their own.
    request = run_request("frames", 0, 0, 100, generation=2)
    assert request.run_key == "frames-0-0-100-g2"
    assert request.run_config["ops"]["detect"]["config"]["generation"] == 2
    assert run_request("frames", 0, 0, 100).run_key == "frames-0-0-100"


@pytest.mark.integration
def test_a_re_created_topic_is_noticed_and_gets_new_run_keys(kafka):
    from kafka.admin import NewTopic

    fill(kafka, 30)
    policy = BatchPolicy(fast_lane=False, max_batch=100, max_wait_s=0, runs_per_partition=10, watch_s=0)
    with fresh_instance() as instance:
        first = tick(kafka, instance, policy)
        assert [r.run_key for r in first.run_requests] == [f"{kafka.frames_topic}-0-0-30"]
        admin = kafka.admin()
        try:
            admin.delete_topics([kafka.frames_topic])
            deadline = time.monotonic() + 60
            while True:  # deletion is asynchronous
                try:
                    admin.create_topics([NewTopic(kafka.frames_topic, 2, 1)])
                    break
                except Exception:
                    assert time.monotonic() < deadline, "the topic could not be re-created"
                    time.sleep(0.5)
        finally:
            admin.close()
        fill(kafka, 50)  # past the old cursor: only the topic's id tells it is new
        second = tick(kafka, instance, policy, cursor=first.cursor)
    assert [r.run_key for r in second.run_requests] == [f"{kafka.frames_topic}-0-0-50-g1"]
    assert json.loads(second.cursor)["generation"] == 1


def test_repairs_back_off_and_give_up_after_their_attempts():
    from imgpipeline.defs.streaming.reconcile import REPAIR_ATTEMPTS, REPAIR_BACKOFF_S, Coverage, plan_repairs

    report = [Coverage(partition=0, generation=0, beginning=0, upto=300, holes=[(100, 250)])]

    def plan(record, now, holes=report):
        return plan_repairs(holes, record, now=now, max_batch=100, topic="frames")

    due, record, _ = plan({}, 1000.0)
    assert due == [] and set(record) == {"frames-0-100-200", "frames-0-200-250"}  # seen, not yet due
    at = 1000.0 + REPAIR_BACKOFF_S
    due, record, _ = plan(record, at)
    assert due == [(0, 0, 100, 200, 1), (0, 0, 200, 250, 1)]
    # The next try waits twice as long.
    assert plan(record, at + REPAIR_BACKOFF_S)[0] == []
    due, record, _ = plan(record, at + 2 * REPAIR_BACKOFF_S)
    assert [d[-1] for d in due] == [2, 2]
    due, _, given_up = plan({k: {"n": REPAIR_ATTEMPTS, "at": 0} for k in record}, 1e12)
    assert due == [] and sorted(given_up) == sorted(record)
    # A hole that was filled drops out of the record.
    assert plan(record, 1e12, holes=[])[1] == {}
