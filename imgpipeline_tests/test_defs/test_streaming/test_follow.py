"""The fast lane on the real broker and storage: frames_sensor keeps one follow_frames run alive, which
detects each partition's frames as they come, accounts for them as detect_frames runs do, and, killed
mid-range, is taken over by the next run with nothing lost or doubled."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter

import dagster as dg
import pytest
from kafka import TopicPartition

from imgpipeline.cli.status import fast_lane
from imgpipeline.defs.records.keys import range_name
from imgpipeline.defs.records.ledger import accounted_ranges, range_key
from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.follow import CLAIMS, FAST_LANE_TAG, claims_prefix, follow_frames
from imgpipeline.defs.streaming.frames_sensor import build_frames_sensor
from imgpipeline.defs.streaming.run_queries import LANE_BACKOFF_S, lane_backoff
from imgpipeline.defs.tables import TOPIC_ASSET
from imgpipeline.resources import DetectorResource
from imgpipeline_tests.instances import bare_home, fresh_instance
from imgpipeline_tests.pipeline import (
    kill_when,
    landing_records,
    produce,
    run_resources,
    storage_env,
    video_backlog,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.instance]
LANE = BatchPolicy(fast_lane=True, watch_s=0)


def tick(kafka, storage, instance, cursor=None, policy=LANE):
    """One tick of frames_sensor as the daemon evaluates it (its run requests checked)."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"kafka": kafka})
    return build_frames_sensor(policy).evaluate_tick(context)


def follow(request, instance, kafka, storage, **config) -> dg.ExecuteInProcessResult:
    """The requested follow_frames run, executed here until it idles for a second."""
    run_config = json.loads(json.dumps(request.run_config))
    run_config["ops"]["follow"]["config"].update({"idle_end_s": 1.5, **config})
    return follow_frames.execute_in_process(
        run_config=run_config, instance=instance, tags=request.tags,
        resources=run_resources(kafka=kafka, storage=storage, detector=DetectorResource.from_env()))


def ends_of(kafka) -> dict[int, int]:
    consumer = kafka.consumer()
    tps = [TopicPartition(kafka.frames_topic, p) for p in consumer.partitions_for_topic(kafka.frames_topic)]
    ends = {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    committed = {tp.partition: consumer.committed(tp) or 0 for tp in tps}
    consumer.close()
    return ends, committed


def assert_each_offset_once(kafka, storage, sent: list[str]) -> None:
    """Every frame sent landed once; every partition's ledger covers [0, end) and the group committed end."""
    landed = Counter(record.frame_id for record in landing_records(storage))
    assert set(landed) == set(sent) and set(landed.values()) == {1}
    ends, committed = ends_of(kafka)
    store = storage.open()
    for partition, end in ends.items():
        ranges = accounted_ranges(store, kafka.frames_topic, partition)
        assert [r for r in ranges if r[0] < end] == sorted(ranges), ranges
        position = 0
        for start, stop in ranges:  # contiguous, no offset in two ranges
            assert start == position
            position = stop
        assert position == end and committed[partition] == end


def test_the_fast_lane_detects_frames_as_they_come_and_accounts_for_each_offset_once(kafka, storage,
                                                                                   tmp_path):
    first_sent = time.monotonic()
    early = video_backlog(30, "cam-a") + video_backlog(30, "cam-b")
    produce(kafka, storage, tmp_path, early)
    with fresh_instance() as instance:
        first = tick(kafka, storage, instance)
        # One run follows the topic: no detect_frames range is launched beside it.
        assert [r.job_name for r in first.run_requests] == [follow_frames.name]
        request = first.run_requests[0]
        assert request.tags[FAST_LANE_TAG] == kafka.frames_topic
        assert request.run_config["ops"]["follow"]["config"]["starts"] == {"0": 0, "1": 0}

        late = [video_backlog(3, "cam-a" if n % 2 else "cam-b") for n in range(6)]

        def send_late() -> None:  # once the run is under way: a burst every 0.7 s
            wait_for(lambda: landing_records(storage), 120, "the run's first landing file", every_s=0.05)
            for n, burst in enumerate(late):
                time.sleep(0.7)  # scenario: the camera's pace
                (tmp_path / str(n)).mkdir()
                produce(kafka, storage, tmp_path / str(n), burst)

        trickle = threading.Thread(target=send_late)
        trickle.start()
        began = time.monotonic()
        result = follow(request, instance, kafka, storage, observe_s=1)
        took = time.monotonic() - began
        trickle.join()
        assert result.success
        out = result.output_for_node("follow")
        # The frames that came while it ran were detected a few at a time, as they came.
        assert out["ranges"] >= 1 + len(late)
        sent = [f.frame_id for f in early] + [f.frame_id for frames in late for f in frames]
        assert out["counts"]["read"] == len(sent)
        assert_each_offset_once(kafka, storage, sent)
        materialized = result.asset_materializations_for_node("follow")
        assert len(materialized) >= out["ranges"]  # each range's landing, reported as it landed
        # It observed kafka_frames as it worked, once a second at most here: each partition's position
        # and lag, frames/s, and the frames' time from the broker to their landing; the last observation
        # where it ended, nothing left.
        observed = [o.metadata for o in result.asset_observations_for_node("follow")
                    if o.asset_key == TOPIC_ASSET]
        assert 2 <= len(observed) <= took + 1
        assert sum(o["frames_per_s"].value for o in observed) > 0
        since_sent = time.monotonic() - first_sent
        assert all(0 < o["landed_p50_s"].value <= o["landed_p95_s"].value < since_sent for o in observed
                   if "landed_p50_s" in o)
        assert any("landed_p95_s" in o for o in observed)
        ends, _ = ends_of(kafka)
        assert {p: observed[-1][f"position_partition_{p}"].value for p in ends} == ends
        assert observed[-1]["lag"].value == 0

        # The sensor's cursor follows the commit; the run ended, so it launches the next from there.
        # `imgpipeline status` shows the run and how far it got, as its positions tag says.
        lane = fast_lane(instance)
        assert lane["run_id"] == result.run_id[:8] and lane["status"] == "SUCCESS"
        assert lane["positions"] == {str(p): o for p, o in ends.items()}
        second = tick(kafka, storage, instance, cursor=first.cursor)
        cursor = json.loads(second.cursor)
        assert {int(p): s["next"] for p, s in cursor["partitions"].items()} == ends
        assert not any(cursor["lag"].values())
        assert [r.run_config["ops"]["follow"]["config"]["starts"] for r in second.run_requests] == [
            {str(p): o for p, o in ends.items()}]
        assert not storage.open().list(CLAIMS)


def test_a_follower_in_flight_holds_the_sensor_back_and_turned_off_it_goes_on_from_the_commit(kafka, storage,
                                                                                                tmp_path):
    produce(kafka, storage, tmp_path, video_backlog(20, "cam-a"))
    with fresh_instance() as instance:
        first = tick(kafka, storage, instance)
        request = first.run_requests[0]
        # While a follow_frames run is in flight, neither mode launches anything beside it.
        instance.create_run_for_job(follow_frames, run_config=request.run_config, tags=request.tags)
        assert not tick(kafka, storage, instance, cursor=first.cursor).run_requests
        off = BatchPolicy(fast_lane=False, max_batch=100, watch_s=0)
        held = tick(kafka, storage, instance, cursor=first.cursor, policy=off)
        assert not held.run_requests and "still follows" in held.skip_message
        for run in instance.get_runs(dg.RunsFilter(job_name=follow_frames.name)):
            instance.report_run_canceled(run)

        assert follow(request, instance, kafka, storage).success
        ends, _ = ends_of(kafka)
        (tmp_path / "more").mkdir()
        produce(kafka, storage, tmp_path / "more", video_backlog(5, "cam-a"))
        # The fast lane off: ranges start where the follower's commit is, not where the cursor was.
        after = tick(kafka, storage, instance, cursor=first.cursor, policy=off)
        ranges = {(r.run_config["ops"]["detect"]["config"]["partition"],
                   r.run_config["ops"]["detect"]["config"]["start_offset"]) for r in after.run_requests}
        assert ranges and all(start == ends[p] for p, start in ranges)
        assert "followed" not in json.loads(after.cursor)


def test_a_follower_killed_mid_range_is_taken_over_with_nothing_lost_or_doubled(kafka, tmp_path):
    from imgpipeline.resources import StorageResource

    storage = StorageResource(uri=str(tmp_path / "store"))
    frames = video_backlog(80, "cam-a")
    produce(kafka, storage, tmp_path, frames)
    ends, _ = ends_of(kafka)
    (partition, end), = [(p, e) for p, e in ends.items() if e]
    topic = kafka.frames_topic
    config = {"ops": {"follow": {"config": {"topic": topic, "starts": {str(p): 0 for p in ends},
                                            "idle_end_s": 60}}}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    env = {**storage_env(storage), "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "IMGPIPELINE_FRAMES_TOPIC": topic, "IMGPIPELINE_HOME": str(tmp_path),
           "DAGSTER_HOME": bare_home(tmp_path / "dagster")}
    command = [sys.executable, "-m", "dagster", "job", "execute", "-m", "imgpipeline.definitions",
               "-j", follow_frames.name, "-c", str(tmp_path / "run.json")]
    folder = storage.open().folder
    claim = folder / f"{claims_prefix(topic, partition)}0.json"
    kill_when(command, env, claim, folder / range_key(topic, partition, 0, end))
    assert json.loads(claim.read_text())["end"] == end  # killed between its claim and its ledger entry
    more = video_backlog(20, "cam-a")  # the next run sees [0, end + 20): a range of its own would differ
    (tmp_path / "more").mkdir()
    produce(kafka, storage, tmp_path / "more", more)

    with fresh_instance() as instance:
        first = tick(kafka, storage, instance)
        result = follow(first.run_requests[0], instance, kafka, storage)
    assert result.success
    # The claimed range was detected again with the same ends: the same landing files, rewritten.
    assert range_name(topic, partition, 0, end) in json.dumps(
        [m.description for m in result.asset_materializations_for_node("follow")])
    assert (0, end) in accounted_ranges(storage.open(), topic, partition)
    assert_each_offset_once(kafka, storage, [f.frame_id for f in frames + more])
    assert not storage.open().list(CLAIMS)


def test_a_follower_whose_process_is_told_to_stop_ends_its_run_done_not_failed(kafka, tmp_path):
    """`imgpipeline dev` or `services down` stopped, a pod evicted: SIGTERM to the run's process. The run
    ends as at the end of its time, not failed (a failure would hold the next follower back and make
    `imgpipeline status` fail for a day), and what it read is accounted for once."""
    import os
    import signal
    import subprocess

    from imgpipeline.resources import StorageResource

    storage = StorageResource(uri=str(tmp_path / "store"))
    frames = video_backlog(30, "cam-a")
    produce(kafka, storage, tmp_path, frames)
    ends, _ = ends_of(kafka)
    starts = {str(p): 0 for p in ends}
    config = {"ops": {"follow": {"config": {"topic": kafka.frames_topic, "starts": starts}}}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    home = bare_home(tmp_path / "dagster")
    env = {**storage_env(storage), "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic, "IMGPIPELINE_HOME": str(tmp_path),
           "DAGSTER_HOME": home}
    command = [sys.executable, "-m", "dagster", "job", "execute", "-m", "imgpipeline.definitions",
               "-j", follow_frames.name, "-c", str(tmp_path / "run.json")]
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        wait_for(lambda: len(landing_records(storage)) == len(frames), 180, "the frames to land")
        os.killpg(run.pid, signal.SIGTERM)
        assert run.wait(timeout=60) == 0
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    with dg.DagsterInstance.from_config(home) as instance:
        [record] = instance.get_run_records(dg.RunsFilter(job_name=follow_frames.name))
        logs = [e.message for e in instance.all_logs(record.dagster_run.run_id)]
    assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    assert any("its process was told to stop" in message for message in logs)
    assert_each_offset_once(kafka, storage, [f.frame_id for f in frames])


def test_followers_that_keep_failing_are_launched_again_later_not_in_a_loop(kafka, storage, tmp_path):
    produce(kafka, storage, tmp_path, video_backlog(5, "cam-a"))
    with fresh_instance() as instance:
        request = tick(kafka, storage, instance).run_requests[0]
        failed = []
        for attempt in range(3):
            run = instance.create_run_for_job(follow_frames, run_config=request.run_config, tags=request.tags)
            instance.report_run_failed(run)
            failed.append(run)
            # One failure is taken over at once (a killed worker); two and more wait, longer each time.
            requests = tick(kafka, storage, instance).run_requests
            assert [r.job_name for r in requests] == ([follow_frames.name] if attempt == 0 else [])
        context = dg.build_sensor_context(instance=instance)
        record = instance.get_run_record_by_id(failed[-1].run_id)
        ended = record.end_time or record.update_timestamp.timestamp()
        assert "the last 3 follow_frames runs failed" in lane_backoff(context, kafka.frames_topic, ended + 1)
        assert lane_backoff(context, kafka.frames_topic, ended + LANE_BACKOFF_S * 2) is None


def test_the_cursor_follows_the_fast_lane_as_far_as_its_runs_accounted_in_its_generation():
    from kafka.structs import OffsetAndMetadata

    from imgpipeline.defs.streaming.detect_frames import of_generation
    from imgpipeline.defs.streaming.offsets import Offsets
    from imgpipeline.defs.streaming.planning import follow_plan

    offsets = Offsets(ends={0: 100, 1: 50}, beginnings={0: 0, 1: 0}, committed={0: 40, 1: None})
    cursor = {"partitions": {"0": {"next": 10, "since": 1.0}}, "gaps": 0}
    # The further of the group's commit and the runs' positions; never backwards.
    plan = follow_plan(cursor, offsets, True, positions={0: 60, 1: 20})
    assert {p: s["next"] for p, s in plan.cursor["partitions"].items()} == {"0": 60, "1": 20}
    assert plan.ranges == [] and plan.cursor["followed"] is True
    behind = follow_plan(plan.cursor, offsets, True, positions={0: 30})
    assert behind.cursor["partitions"]["0"]["next"] == 60
    # Turned off: taken once, then ranges are planned from there.
    off = follow_plan(plan.cursor, offsets, False, positions={})
    assert "followed" not in off.cursor and off.cursor["partitions"]["0"]["next"] == 60
    # A commit names its generation; one that names none is generation 0's.
    assert of_generation(OffsetAndMetadata(5, "", -1), 0) == 5
    assert of_generation(OffsetAndMetadata(5, "", -1), 1) is None
    assert of_generation(OffsetAndMetadata(5, "g1", -1), 1) == 5
    assert of_generation(OffsetAndMetadata(5, "g0", -1), 1) is None
    assert of_generation(None, 0) is None


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"end": "x"}', b"[1, 2]", b'{"run_id": "r"}'])
def test_a_damaged_claim_is_passed_over_and_nothing_is_lost_or_doubled(kafka, tmp_path, damage):
    from imgpipeline.resources import StorageResource

    storage = StorageResource(uri=str(tmp_path / "store"))
    frames = video_backlog(12, "cam-a")
    produce(kafka, storage, tmp_path, frames)
    ends, _ = ends_of(kafka)
    for partition in ends:  # a claim where each partition's next run starts, unreadable
        storage.open().put(f"{claims_prefix(kafka.frames_topic, partition)}0.json", damage)
    with fresh_instance() as instance:
        result = follow(tick(kafka, storage, instance).run_requests[0], instance, kafka, storage)
    assert result.success
    assert_each_offset_once(kafka, storage, [f.frame_id for f in frames])
    assert not storage.open().list(CLAIMS)
