"""The fast lane on the real broker and storage: frames_sensor keeps one follow_frames run alive, which
detects each partition's frames as they come, accounts for them as detect_frames runs do, and, killed
mid-range, is taken over by the next run with nothing lost or doubled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import dagster as dg
import pytest
from kafka import TopicPartition

from imgpipeline.cli.status import fast_lane
from imgpipeline.defs.records.keys import range_name
from imgpipeline.defs.records.ledger import accounted_ranges, range_key
from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.claims import CLAIMS, claims_prefix
from imgpipeline.defs.streaming.follow import FAST_LANE_TAG, follow_frames
from imgpipeline.defs.streaming.follower import POSITIONS_TAG
from imgpipeline.defs.streaming.frames_sensor import build_frames_sensor
from imgpipeline.defs.streaming.run_queries import LANE_BACKOFF_S, lane_backoff
from imgpipeline.defs.tables import TOPIC_ASSET
from imgpipeline.resources import DetectorResource
from imgpipeline_tests.instances import bare_home, fresh_instance
from imgpipeline_tests.pipeline import (
    STOP_AFTER,
    claims_of,
    kill_once_stopped,
    kill_when,
    landing_records,
    produce,
    run_resources,
    storage_env,
    stream_cameras,
    video_backlog,
    wait_for,
    wait_stopped,
)

pytestmark = [pytest.mark.integration, pytest.mark.instance]
LANE = BatchPolicy(fast_lane=True, watch_s=0)


def tick(kafka, storage, instance, cursor=None, policy=LANE):
    """One tick of frames_sensor as the daemon evaluates it (its run requests checked)."""
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"kafka": kafka, "storage": storage}) as context:
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
    records = landing_records(storage)
    landed = Counter(record.frame_id for record in records)
    twice = sorted((r.frame_id, r.partition, r.offset, (r.run_id or "")[:8])
                   for r in records if landed[r.frame_id] > 1)
    assert set(landed) == set(sent) and not twice, f"landed twice (frame, partition, offset, run): {twice}"
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
        [lane] = fast_lane(instance)
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



def test_the_sensor_keeps_the_followers_set_within_the_partitions_and_follows_the_furthest_of_them(
        kafka, storage, tmp_path):
    """IMGPIPELINE_FOLLOWERS=3 on a topic of two partitions: two follow_frames runs (a third would hold
    nothing), then only the one missing; the cursor goes on from the furthest any of them accounted for
    each partition (a partition handed from one to the other: the later holder's)."""
    three = BatchPolicy(fast_lane=True, watch_s=0, followers=3)
    produce(kafka, storage, tmp_path, video_backlog(10, "cam-a"))
    with fresh_instance() as instance:
        # A follower from before they shared the topic reads every partition outside the group: none
        # starts beside it.
        old = instance.create_run_for_job(follow_frames, tags={FAST_LANE_TAG: kafka.frames_topic})
        assert not tick(kafka, storage, instance, policy=three).run_requests
        instance.report_run_canceled(old)
        first = tick(kafka, storage, instance, policy=three)
        assert [r.job_name for r in first.run_requests] == [follow_frames.name] * 2
        assert len({r.run_key for r in first.run_requests}) == 2
        # They end a minute apart: the topic is never left to none while the next ones start.
        run_s = [r.run_config["ops"]["follow"]["config"]["run_s"] for r in first.run_requests]
        assert run_s[1] - run_s[0] == 60
        a = instance.create_run_for_job(follow_frames, run_config=first.run_requests[0].run_config,
                                        tags=first.run_requests[0].tags)
        again = tick(kafka, storage, instance, cursor=first.cursor, policy=three)
        assert [r.job_name for r in again.run_requests] == [follow_frames.name]
        b = instance.create_run_for_job(follow_frames, run_config=again.run_requests[0].run_config,
                                        tags=again.run_requests[0].tags)
        ends, _ = ends_of(kafka)
        (busy, end), = [(p, e) for p, e in ends.items() if e]
        # a held both partitions and handed `busy` on at 3; b has got to 7 in it.
        said = {a.run_id: {str(p): 3 if p == busy else 0 for p in ends}, b.run_id: {str(busy): 7}}
        for run_id, positions in said.items():
            tag = json.dumps({"generation": 0, "positions": positions})
            instance.add_run_tags(run_id, {POSITIONS_TAG: tag})
        later = tick(kafka, storage, instance, cursor=again.cursor or first.cursor, policy=three)
        assert not later.run_requests
        assert json.loads(later.cursor)["partitions"][str(busy)]["next"] == 7 < end


def one_camera(kafka, tmp_path, count: int, **config):
    """`count` frames of one camera sent: the storage, the frames, their partition and its end, the run config
    of a follow_frames run of the topic from its beginning (with `config`), and the environment a process
    running it needs."""
    from imgpipeline.resources import StorageResource

    storage = StorageResource(uri=str(tmp_path / "store"))
    frames = video_backlog(count, "cam-a")
    produce(kafka, storage, tmp_path, frames)
    ends, _ = ends_of(kafka)
    (held,) = [(p, e) for p, e in ends.items() if e]
    topic = kafka.frames_topic
    run_config = {"ops": {"follow": {"config": {"topic": topic, "starts": {str(p): 0 for p in ends},
                                                **config}}}}
    env = {**storage_env(storage), "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "IMGPIPELINE_FRAMES_TOPIC": topic, "IMGPIPELINE_HOME": str(tmp_path)}
    return storage, frames, held, run_config, env


def test_a_follower_killed_mid_range_is_taken_over_with_nothing_lost_or_doubled(kafka, tmp_path):
    storage, frames, (partition, end), config, env = one_camera(kafka, tmp_path, 80, idle_end_s=60)
    topic = kafka.frames_topic
    (tmp_path / "run.json").write_text(json.dumps(config))
    env["DAGSTER_HOME"] = bare_home(tmp_path / "dagster")
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


# A follow_frames run that stops itself right after its first range's frames landed (argv[2] "landed": the
# range claimed and landed, neither accounted for nor committed), or once the range's ledger entry is
# written ("accounted": the group's commit and the run's positions not yet).
FOLLOW_UNTIL = STOP_AFTER + """
import json, sys
import dagster as dg
from imgpipeline.configuration import Settings
from imgpipeline.defs.streaming import detect_frames
from imgpipeline.defs.streaming.follow import follow_frames
if sys.argv[2] == "landed":
    stop_after(detect_frames.Batch, "land")
else:
    stop_after(detect_frames, "record_range")
with dg.DagsterInstance.ephemeral() as instance:
    follow_frames.execute_in_process(run_config=json.loads(sys.argv[1]), instance=instance,
                                     resources=Settings.from_env().resources())
"""


@pytest.mark.parametrize("killed", ["landed", "accounted"])
def test_a_range_a_killed_follower_left_goes_to_detect_frames_with_the_same_ends(kafka, tmp_path, killed):
    """Followers failed one after the other, the last killed once its range's frames landed (or once its
    ledger entry was written), before the group's commit and its positions said so. No follower runs while
    the next waits: the sensor plans detect_frames ranges from where the ledger accounts for every offset,
    a claimed range there first with the claim's ends (the same landing files, rewritten), then the frames
    sent since. Every frame lands once."""
    from imgpipeline.defs.streaming.detect_frames import detect_frames

    storage, frames, (partition, end), config, env = one_camera(kafka, tmp_path, 30, max_batch=20)
    topic = kafka.frames_topic
    kill_once_stopped(subprocess.Popen([sys.executable, "-c", FOLLOW_UNTIL, json.dumps(config), killed],
                                       env={**os.environ, **env}))
    store = storage.open()
    assert json.loads(store.get(f"{claims_prefix(topic, partition)}0.json"))["end"] == 20
    assert len(landing_records(storage)) == 20 and ends_of(kafka)[1][partition] == 0
    assert accounted_ranges(store, topic, partition) == ([] if killed == "landed" else [(0, 20)])
    more = video_backlog(15, "cam-a")
    produce(kafka, storage, tmp_path / "more", more)

    resources = run_resources(kafka=kafka, storage=storage, detector=DetectorResource.from_env())
    with fresh_instance() as instance:
        first = tick(kafka, storage, instance)
        follower, cursor = first.run_requests[0], first.cursor
        for _ in range(5):  # more failed: the next waits 80 s, and no run holds the partition
            instance.report_run_failed(instance.create_run_for_job(
                follow_frames, run_config=follower.run_config, tags=follower.tags))
        planned = []
        while (result := tick(kafka, storage, instance, cursor)).run_requests:
            cursor = result.cursor or cursor
            for request in result.run_requests:
                assert request.job_name == detect_frames.name
                detect = request.run_config["ops"]["detect"]["config"]
                planned.append((detect["start_offset"], detect["end_offset"]))
                assert detect_frames.execute_in_process(run_config=request.run_config, instance=instance,
                                                        tags=request.tags, resources=resources).success
        assert planned[0] == ((0, 20) if killed == "landed" else (20, end + len(more)))
        assert planned[-1][1] == end + len(more)
        assert_each_offset_once(kafka, storage, [f.frame_id for f in frames + more])
        # The sensor only reads claims (a range it planned from one may still fail): the next follower,
        # once the wait is over, finds every offset accounted for and deletes it.
        assert store.list(CLAIMS)
        instance.create_run_for_job(follow_frames, run_config=follower.run_config, tags=follower.tags,
                                    status=dg.DagsterRunStatus.SUCCESS)
        [request] = tick(kafka, storage, instance, cursor).run_requests
        assert request.job_name == follow_frames.name
        assert follow(request, instance, kafka, storage).success
    assert_each_offset_once(kafka, storage, [f.frame_id for f in frames + more])
    assert not store.list(CLAIMS)


def test_a_follower_told_to_stop_between_a_ranges_ledger_entry_and_its_commit_commits_it_as_it_ends(
        kafka, tmp_path):
    """SIGTERM while a range's ledger entry is written and its commit not yet made (the last range of the
    partition: no later one would move the commit): the run ends done, the group's commit where the ledger
    accounts for every offset. Lag tools and the next follower read the commit."""
    import signal

    storage, frames, (partition, end), config, env = one_camera(kafka, tmp_path, 30, max_batch=20)
    told = "\nimport signal\nsignal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))\nif sys.argv"
    script = FOLLOW_UNTIL.replace("\nif sys.argv", told, 1)  # SIGTERM as `dagster job execute` takes it
    process = subprocess.Popen([sys.executable, "-c", script, json.dumps(config), "accounted"],
                               env={**os.environ, **env})
    try:
        wait_stopped(process)  # the range [0, 20) accounted for, not committed
        assert accounted_ranges(storage.open(), kafka.frames_topic, partition) == [(0, 20)]
        assert ends_of(kafka)[1][partition] == 0
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert ends_of(kafka)[1][partition] == 20
    assert len(landing_records(storage)) == 20 < end


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
        # Landed and accounted for (the commit comes last): a range stopped mid-way is left to its claim.
        wait_for(lambda: len(landing_records(storage)) == len(frames) and ends_of(kafka)[1] == ends, 180,
                 "the frames to land and be accounted for")
        # Fallen idle, it says how far it got (`imgpipeline status`, the sensor's cursor) while it runs.
        with dg.DagsterInstance.from_config(home) as instance:
            wait_for(lambda: [lane["positions"] for lane in fast_lane(instance)] == [
                {str(p): o for p, o in ends.items()}], 60, "the follower's positions",
                explain=lambda: str(fast_lane(instance)))
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
            # One failure is taken over at once (a killed worker); two and more wait, longer each time
            # (meanwhile detect_frames runs take the frames: the next test).
            requests = tick(kafka, storage, instance).run_requests
            followers = [r for r in requests if r.job_name == follow_frames.name]
            assert len(followers) == (1 if attempt == 0 else 0)
        context = dg.build_sensor_context(instance=instance)
        record = instance.get_run_record_by_id(failed[-1].run_id)
        ended = record.end_time or record.update_timestamp.timestamp()
        assert "the last 3 follow_frames runs failed" in lane_backoff(context, kafka.frames_topic, ended + 1)
        assert lane_backoff(context, kafka.frames_topic, ended + LANE_BACKOFF_S * 2) is None


def test_while_followers_wait_detect_frames_takes_the_frames_and_the_next_follower_detects_what_failed(
        kafka, storage, tmp_path):
    """Followers failed one after the other: the next waits, and no run owns the partitions. The sensor
    launches detect_frames ranges for the frames sent meanwhile; the second fails. Once the wait is over
    and no range is in flight, the next follower goes on from the group's commit: it detects the failed
    range's offsets and passes over the range accounted for past them. Every frame once, the ledger
    without a hole or an overlap."""
    from imgpipeline.defs.streaming.detect_frames import detect_frames

    policy = BatchPolicy(fast_lane=True, watch_s=0)
    resources = run_resources(kafka=kafka, storage=storage, detector=DetectorResource.from_env())
    sent = []

    def send(n: int) -> None:
        frames = video_backlog(5, "cam-a")
        produce(kafka, storage, tmp_path / f"sent-{n}", frames)
        sent.extend(f.frame_id for f in frames)

    def launched(cursor: str) -> tuple[dg.RunRequest, str]:
        result = tick(kafka, storage, instance, cursor, policy)
        assert [r.job_name for r in result.run_requests] == [detect_frames.name]
        return result.run_requests[0], result.cursor or cursor

    def execute(request: dg.RunRequest) -> None:
        assert detect_frames.execute_in_process(run_config=request.run_config, instance=instance,
                                                tags=request.tags, resources=resources).success

    send(0)
    with fresh_instance() as instance:
        first = tick(kafka, storage, instance, policy=policy)
        follower, cursor = first.run_requests[0], first.cursor
        for _ in range(5):  # five failed in a row: the next waits 80 s
            instance.report_run_failed(instance.create_run_for_job(
                follow_frames, run_config=follower.run_config, tags=follower.tags))
        ranges = []
        for n in (1, 2, 3):  # each tick while no follower runs: a range of the new frames
            request, cursor = launched(cursor)
            ranges.append(request)
            if n == 1:
                execute(request)
            elif n == 2:  # it fails
                instance.report_run_failed(instance.create_run_for_job(
                    detect_frames, run_config=request.run_config, tags=request.tags))
            if n < 3:
                send(n)
        # A follower that ended well ends the wait, but the third range is in flight: no follower yet.
        instance.create_run_for_job(follow_frames, run_config=follower.run_config, tags=follower.tags,
                                    status=dg.DagsterRunStatus.SUCCESS)
        queued = instance.create_run_for_job(detect_frames, run_config=ranges[2].run_config,
                                             tags=ranges[2].tags)
        assert not tick(kafka, storage, instance, cursor, policy).run_requests
        instance.delete_run(queued.run_id)
        execute(ranges[2])
        [request] = tick(kafka, storage, instance, cursor, policy).run_requests
        assert request.job_name == follow_frames.name
        hole = ranges[1].run_config["ops"]["detect"]["config"]
        partition = str(hole["partition"])
        assert request.run_config["ops"]["follow"]["config"]["starts"][partition] == hole["start_offset"]
        result = follow(request, instance, kafka, storage)
    assert result.success
    assert_each_offset_once(kafka, storage, sent)
    ranges = accounted_ranges(storage.open(), kafka.frames_topic, int(partition))
    assert (hole["start_offset"], hole["end_offset"]) in ranges and len(ranges) == 3


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



# Sources whose frames go to partitions 0, 1, 2 and 3 of a four-partition topic (keyed by source id).
SOURCES = {"cam-7": 0, "cam-0": 1, "cam-4": 2, "cam-1": 3}
# A rule every frame of the video meets whatever the CPU detects: one episode, one alert, per camera.
LIT = "rules:\n  - {name: lit, kind: dark, max_brightness: 254}\n"


def test_followers_share_the_topic_one_killed_one_added_nothing_lost_or_doubled(kafka, tmp_path):
    """Three follow_frames runs on a topic of four partitions while four cameras stream: two share the
    partitions, a third joins mid-stream and takes its share, one is SIGKILLed mid-range and the others
    take its partitions over, its claimed range detected again with the same ends. Every frame landed
    once, every offset accounted for once, every live alert sent once."""
    import os
    import signal
    import subprocess

    from imgpipeline.resources import StorageResource
    from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all

    kafka.ensure_topics(partitions=4)
    topic, storage = kafka.frames_topic, StorageResource(uri=str(tmp_path / "store"))
    store, folder = storage.open(), storage.open().folder
    (tmp_path / "alerts.yaml").write_text(LIT)
    config = {"ops": {"follow": {"config": {"topic": topic, "starts": {str(p): 0 for p in range(4)},
                                            "max_batch": 15, "poll_s": 0.2}}}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    env = {**storage_env(storage), "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "IMGPIPELINE_FRAMES_TOPIC": topic, "IMGPIPELINE_HOME": str(tmp_path),
           "IMGPIPELINE_ALERTS_TOPIC": kafka.alerts_topic,
           "IMGPIPELINE_ALERTS_FILE": str(tmp_path / "alerts.yaml")}
    followers: dict[str, tuple[subprocess.Popen, str]] = {}

    def start(name: str) -> None:
        home = bare_home(tmp_path / name)
        command = [sys.executable, "-m", "dagster", "job", "execute", "-m", "imgpipeline.definitions",
                   "-j", follow_frames.name, "-c", str(tmp_path / "run.json"), "--tags",
                   json.dumps({"follower": name})]
        process = subprocess.Popen(command, env={**env, "DAGSTER_HOME": home}, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        followers[name] = (process, home)

    def run_of(name: str) -> dg.DagsterRun | None:
        with dg.DagsterInstance.from_config(followers[name][1]) as instance:
            runs = instance.get_runs(dg.RunsFilter(job_name=follow_frames.name, tags={"follower": name}))
            return runs[0] if runs else None

    def logs_of(name: str) -> list[str]:
        with dg.DagsterInstance.from_config(followers[name][1]) as instance:
            return [e.message for e in instance.all_logs(run_of(name).run_id)]

    sent: list[str] = []

    def stream(rounds: int) -> None:
        stream_cameras(kafka, storage, tmp_path, SOURCES, rounds, 6, sent)

    try:
        start("a")
        start("b")
        stream(4)
        wait_for(lambda: len(landing_records(storage)) >= 48 and run_of("a") and run_of("b"), 180,
                 "the first two followers to land frames")
        # Both hold a share of the partitions: each said what it follows.
        for name in "ab":
            wait_for(lambda name=name: any("following" in m for m in logs_of(name)), 60, f"{name} to follow")
        start("c")  # added mid-stream
        more = threading.Thread(target=stream, args=(16,))
        more.start()
        # It takes its share: one of the first two hands it a partition (four over three runs).
        wait_for(lambda: run_of("c") and any("following" in m for m in logs_of("c")), 120, "c to follow")
        victim = run_of("b").run_id
        claim = wait_for(lambda: claims_of(store, victim), 180, "b to claim a range", every_s=0.01)
        os.killpg(followers["b"][0].pid, signal.SIGKILL)
        followers["b"][0].wait()
        more.join()
        [key] = claim
        start_offset = int(key.rsplit("/", 1)[1].removesuffix(".json"))
        partition = int(key.split("/")[-2])
        end = json.loads((folder / key).read_text())["end"] if (folder / key).exists() else None
        wait_for(lambda: Counter(r.frame_id for r in landing_records(storage)).keys() >= set(sent), 240,
                 "every frame to land", explain=lambda: f"{len(landing_records(storage))} of {len(sent)}")
        for name in "ac":
            os.killpg(followers[name][0].pid, signal.SIGTERM)
            assert followers[name][0].wait(timeout=60) == 0
        assert_each_offset_once(kafka, storage, sent)
        if end is not None:  # killed mid-range: the range was detected again, with the same ends
            assert (start_offset, end) in accounted_ranges(store, topic, partition)
        # The one added mid-stream took a share that one of the first two handed on; the killed one's
        # partitions went to the others.
        assert any("handed to another follower" in m for m in logs_of("a") + logs_of("b"))
        assert run_of("a").status == run_of("c").status == dg.DagsterRunStatus.SUCCESS
        assert not store.list(CLAIMS)
    finally:
        for process, _ in followers.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    # Live alerts: each camera's one episode raised once, from its first frame, whichever follower held its
    # partition then, and sent once: none raised again by the followers that took the partition over.
    alerts = [json.loads(r.value) for r in read_all(kafka, kafka.alerts_topic)]
    first = {source: next(f for f in sent if f.startswith(f"{source}-")) for source in SOURCES}
    assert sorted((m["rule"], m["source_id"], m["frame_id"]) for m in alerts) == sorted(
        ("lit", source, frame) for source, frame in first.items())
    assert len({m["number"] for m in alerts}) == len(SOURCES)


def test_a_follower_that_joined_before_its_topic_had_partitions_is_given_them_soon(services):
    """A follower that joined its group before the broker knew the topic's partitions (the topic made, or
    grown, just then: the group's first share was of nothing) is given them within seconds, not at the
    consumer's next metadata refresh, minutes later. Then the topic grows: the new partition is shared
    out too. The group is asked without waiting, as a busy follower asks it: kafka-python lost a rejoin
    a poll gave up on mid-way, and the follower then held nothing until the group's next rebalance."""
    from imgpipeline.defs.streaming.membership import Membership
    from imgpipeline.resources import KafkaResource

    tag = uuid.uuid4().hex[:8]
    kafka = KafkaResource(bootstrap_servers=services.kafka.address(services.kafka.ports),
                          frames_topic=f"frames-{tag}", alerts_topic=f"alerts-{tag}")
    membership = Membership(kafka, kafka.frames_topic)
    try:
        wait_for(lambda: membership.share(0.2) is not None, 60, "the group's first share")
        assert membership.held == set()  # the topic is not there yet
        # Within a minute, not at Kafka's default refresh 5 minutes on (a loaded machine may take seconds).
        kafka.ensure_topics(partitions=2)
        wait_for(lambda: membership.share() == {0, 1}, 60, "the follower to be given the new partitions",
                 explain=lambda: f"it holds {membership.held}")
        kafka.ensure_topics(partitions=3)
        wait_for(lambda: membership.share() == {0, 1, 2}, 60, "the follower to be given the third",
                 explain=lambda: f"it holds {membership.held}")
    finally:
        membership.close()


def test_a_partition_given_again_by_a_rebalance_is_taken_up_from_the_ledger(kafka, tmp_path):
    """A follower whose session lapsed while it held its partitions (frozen, starved) is given them again
    when it rejoins, and another run went on in them meanwhile. Each rebalance gives a member all its
    partitions again: the follower goes on from the ledger and the claims, never from where it had been
    (it would detect again, under other range names, what the other run landed)."""
    from imgpipeline.defs.records.ledger import record_range
    from imgpipeline.defs.streaming.detect_frames import Lane, Screening
    from imgpipeline.defs.streaming.follower import FollowConfig, Follower
    from imgpipeline.defs.streaming.membership import Membership
    from imgpipeline.resources import StorageResource

    kafka.ensure_topics(partitions=2)
    topic, store = kafka.frames_topic, StorageResource(uri=str(tmp_path / "store")).open()
    with dg.build_op_context() as context:
        consumer, membership = kafka.consumer(auto_offset_reset="none"), Membership(kafka, topic)
        follower = Follower(Lane(context, kafka, store, None, consumer, topic),
                            FollowConfig(topic=topic, starts={"0": 0, "1": 0}), Screening(), membership)
        other, poller, stop = None, None, threading.Event()
        try:
            wait_for(lambda: follower.refresh(0.1, due=True) and len(follower.positions) == 2, 60,
                     "the follower to hold both partitions")
            assert follower.positions == {0: 0, 1: 0}
            # Meanwhile another run accounted for both partitions' first offsets and claimed the next ones
            # of partition 0 (as one does once this run's session lapsed).
            for partition in (0, 1):
                record_range(store, topic, partition, 0, 7, 0, run_id="another", counts={}, gaps=[],
                             duplicates=[], landing=[])
            claim = json.dumps({"end": 9, "run_id": "another"}).encode()
            store.put(f"{claims_prefix(topic, 0)}7.json", claim)
            # A rebalance: the follower keeps one partition, given again. The other member polls in a thread
            # of its own, as another run does in its own process (a member waits on the group in its polls).
            other = Membership(kafka, topic)
            poller = threading.Thread(target=lambda: [other.share(0.1) for _ in iter(stop.is_set, True)],
                                      daemon=True)
            poller.start()
            wait_for(lambda: follower.refresh(0.1, due=True) and other.settled
                     and len(follower.positions) == 1, 60, "the group to share the partitions")
            [kept] = follower.positions
            assert follower.positions == {kept: 7}
            stop.set()
            poller.join(30)
            other.close()  # another: both given again
            other = None
            wait_for(lambda: follower.refresh(0.1, due=True) and len(follower.positions) == 2, 60,
                     "the follower to hold both partitions again")
            assert follower.positions == {0: 7, 1: 7} and follower.claimed == {0: 9}
        finally:
            stop.set()
            if poller is not None:
                poller.join(30)
            for member in (other, membership):
                if member is not None:
                    member.close()
            consumer.close()


def test_a_range_refused_at_its_second_fence_and_detected_again_lands_every_frame(kafka, storage, tmp_path):
    """The group cannot confirm a follower's partition once the range's frames are detected (the broker
    restarting): nothing lands, the partition stays the run's, and the range is detected again. The frames
    of the refused attempt are not taken for frames already landed (they were screened as the attempt went):
    every frame lands, none is a duplicate."""
    from imgpipeline.defs.streaming.detect_frames import Lane, Screening, frame_processor
    from imgpipeline.defs.streaming.follower import FollowConfig, Follower
    from imgpipeline.defs.streaming.membership import Membership

    class RefusedOnce(Membership):
        """The group's answer to the first range's second fence does not come."""

        fences = 0

        def fence(self, partition: int, start: int) -> bool:
            self.fences += 1
            return self.fences != 2 and super().fence(partition, start)

    frames = video_backlog(6, "cam-a")
    produce(kafka, storage, tmp_path, frames)
    ends, _ = ends_of(kafka)
    topic, store = kafka.frames_topic, storage.open()
    seen = {}

    @dg.op
    def refused_then_again(context) -> None:
        """As follow_op, two passes of a follower over the partitions."""
        consumer, membership = kafka.consumer(auto_offset_reset="none"), RefusedOnce(kafka, topic)
        processor = frame_processor(context, store, storage, DetectorResource.from_env())
        config = FollowConfig(topic=topic, starts={str(p): 0 for p in ends})
        follower = Follower(Lane(context, kafka, store, processor, consumer, topic), config, Screening(),
                            membership)
        try:
            wait_for(lambda: follower.refresh(0.1, due=True) and len(follower.positions) == len(ends), 60,
                     "the follower to hold the partitions")
            seen["first"] = follower.step(ends)
            seen["landed"], seen["held"] = len(landing_records(storage)), set(follower.positions)
            seen["again"] = follower.step(ends)
        finally:
            membership.close()
            consumer.close()

    assert dg.GraphDefinition(name="two_passes", node_defs=[refused_then_again]).to_job(
        executor_def=dg.in_process_executor).execute_in_process().success
    # Refused: nothing landed, the partitions kept; the second pass landed the range.
    assert seen == {"first": False, "landed": 0, "held": set(ends), "again": True}
    assert_each_offset_once(kafka, storage, [f.frame_id for f in frames])
    [partition] = [p for p, end in ends.items() if end]
    assert all(not entry["duplicates"] for entry in (json.loads(store.get(key)) for key in store.list(
        f"landing/ranges/{topic}/{partition}/")))


def test_a_follower_frozen_past_its_session_mid_range_lands_nothing_its_successor_landed(kafka, tmp_path):
    """A follower SIGSTOPped while it detects a range it claimed, past the group's session: a second one
    is given the partition and detects the claimed range; the first, let go, finishes detecting it, is
    refused by the group before anything lands (its second fence), and lands nothing. Every frame once,
    all by the second."""
    import os
    import signal
    import subprocess

    from imgpipeline.defs.streaming.membership import SESSION_TIMEOUT_MS
    from imgpipeline.resources import StorageResource
    from imgpipeline_tests.conftest import DETECTOR_ENGINE

    storage = StorageResource(uri=str(tmp_path / "store"))
    frames = video_backlog(120, "cam-a")
    produce(kafka, storage, tmp_path, frames)
    ends, _ = ends_of(kafka)
    (partition, end), = [(p, e) for p, e in ends.items() if e]
    config = {"ops": {"follow": {"config": {"topic": kafka.frames_topic, "starts": {str(p): 0 for p in ends},
                                            "max_batch": 120}}}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    # OpenVINO itself: a range of 120 frames takes seconds to detect, long enough to be caught in.
    env = {**storage_env(storage), "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic, "IMGPIPELINE_HOME": str(tmp_path),
           DETECTOR_ENGINE: "openvino", "IMGPIPELINE_DETECTOR_PRECISION": "auto"}
    folder = storage.open().folder
    claim = folder / f"{claims_prefix(kafka.frames_topic, partition)}0.json"
    runs: dict[str, subprocess.Popen] = {}

    def start(name: str) -> None:
        command = [sys.executable, "-m", "dagster", "job", "execute", "-m", "imgpipeline.definitions",
                   "-j", follow_frames.name, "-c", str(tmp_path / "run.json")]
        runs[name] = subprocess.Popen(command, env={**env, "DAGSTER_HOME": bare_home(tmp_path / name)},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)

    def logs_of(name: str) -> list[str]:
        with dg.DagsterInstance.from_config(str(tmp_path / name)) as instance:
            return [e.message for run in instance.get_runs(dg.RunsFilter(job_name=follow_frames.name))
                    for e in instance.all_logs(run.run_id)]

    try:
        start("frozen")
        wait_for(claim.exists, 180, "the first follower to claim the range", every_s=0.005)
        time.sleep(0.3)  # scenario: past its claim's fence, into the frames
        os.killpg(runs["frozen"].pid, signal.SIGSTOP)
        assert not (folder / range_key(kafka.frames_topic, partition, 0, end)).exists()
        frozen_at = time.monotonic()
        start("next")
        wait_for(lambda: len(landing_records(storage)) == len(frames)
                 and (folder / range_key(kafka.frames_topic, partition, 0, end)).exists(), 180,
                 "the second follower to detect the claimed range")
        assert time.monotonic() - frozen_at >= SESSION_TIMEOUT_MS / 1000  # not before the session lapsed
        landed_by = {r.run_id for r in landing_records(storage)}
        os.killpg(runs["frozen"].pid, signal.SIGCONT)
        wait_for(lambda: any("went to another run" in m for m in logs_of("frozen")), 120,
                 "the first follower to be refused before landing",
                 explain=lambda: str(logs_of("frozen")[-5:]))
        for run in runs.values():
            os.killpg(run.pid, signal.SIGTERM)
            assert run.wait(timeout=60) == 0
    finally:
        for run in runs.values():
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    assert_each_offset_once(kafka, storage, [f.frame_id for f in frames])
    assert {r.run_id for r in landing_records(storage)} == landed_by and len(landed_by) == 1
