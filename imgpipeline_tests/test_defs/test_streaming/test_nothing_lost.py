"""Nothing lost, nothing doubled, on the real broker: poison in a batch, an unwritable DLQ, a range the
log cannot give, retention gaps, replays, two cameras with the same file names."""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import UTC, datetime

import dagster as dg
import pytest
from kafka import TopicPartition

from imgpipeline.cli.samples import sample
from imgpipeline.defs.streaming.detect_frames import detect_frames, detect_run_config
from imgpipeline.defs.tables import FRAMES
from imgpipeline.ingest.messages import FrameMessage, frame_key, sha256_hex
from imgpipeline.resources import DetectorResource, StorageResource, TrackingResource
from imgpipeline_tests.conftest import s3_storage_resource, s3_user
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import landing_files, landing_records, run_resources
from imgpipeline_tests.test_vision.test_vision import png_declaring

pytestmark = [pytest.mark.integration, pytest.mark.instance]
WHEN = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)
STAMP = "2026-11-20T10:30:00.000Z"


@pytest.fixture
def local(tmp_path) -> StorageResource:
    return StorageResource(uri=(tmp_path / "store").as_uri())


def send(kafka, messages: list[tuple[bytes | None, list]]) -> None:
    """(value, headers) pairs to partition 0, in order, acknowledged."""
    producer = kafka.producer()
    for value, headers in messages:
        producer.send(kafka.frames_topic, key=b"cam9", value=value, headers=headers, partition=0)
    producer.flush()
    producer.close()


def run(kafka, storage, instance, start: int, end: int, commit: bool = True, generation: int = 0):
    config = detect_run_config(kafka.frames_topic, 0, start, end, generation)
    config["ops"]["detect"]["config"]["commit"] = commit
    return detect_frames.execute_in_process(
        run_config=config, instance=instance, raise_on_error=False,
        resources=run_resources(kafka=kafka, storage=storage, detector=DetectorResource.from_env()))


def committed(kafka) -> int | None:
    consumer = kafka.consumer()
    try:
        return consumer.committed(TopicPartition(kafka.frames_topic, 0))
    finally:
        consumer.close()


def dead_letters(kafka) -> list:
    consumer = kafka.consumer(group_id=None)
    tp = TopicPartition(kafka.dlq_topic, 0)
    end = consumer.end_offsets([tp])[tp]
    consumer.assign([tp])
    consumer.seek_to_beginning()
    letters = []
    while len(letters) < end:
        batch = consumer.poll(timeout_ms=5000)
        assert batch, "fewer dead letters than the end offset says"
        letters += [r for rs in batch.values() for r in rs]
    consumer.close()
    return letters


def good_frame(store, name: str, source: str = "cam9") -> tuple[bytes, list]:
    data = sample("zidane.jpg").read_bytes()
    key = frame_key(source, WHEN, name)
    store.put(key, data)
    return FrameMessage(name, source, STAMP, store.uri(key), sha256_hex(data), None, None).to_json(), []


@pytest.mark.results
def test_poison_in_a_batch_is_that_frame_s_error_and_the_good_frames_land(kafka, local):
    store = local.open()
    store.put(frame_key("cam9", WHEN, "bomb"), png_declaring(8000, 6000))
    garbage = b"\xff\xd8" + os.urandom(800_000)  # a bad inline frame whose base64 would not fit a letter

    def claim(name: str, uri) -> bytes:
        return json.dumps({"schema": 1, "frame_id": name, "source_id": "cam9", "captured_at": STAMP,
                           "uri": uri}).encode()

    poison = [
        (b"[" * 100_000 + b"]" * 100_000, []),
        (b'{"schema": 1, "width": ' + b"9" * 5000 + b"}", []),
        (claim("inf", store.uri("x")).replace(b'"schema": 1', b'"schema": 1, "width": 1e400'), []),
        (claim("year1", store.uri("x")).replace(STAMP.encode(), b"0001-01-01T00:00:00+01:00"), []),
        (claim("urilist", [1]), []),
        (b"jpeg", [("imgpipeline.frame_id", b""), ("imgpipeline.schema", b"1")]),
        (claim("folder", store.uri(f"frames/cam9/{WHEN.date()}")), []),
        (claim("longname", store.uri("frames/cam9/" + "a" * 300 + ".jpg")), []),
        (claim("bomb", store.uri(frame_key("cam9", WHEN, "bomb"))), []),
        (claim("ctype", store.uri("x")).replace(b'"schema": 1', b'"schema": 1, "content_type": 5'), []),
        (garbage, FrameMessage("garbage", "cam9", STAMP, None, None, None, None).to_headers()),
    ]
    batch = []
    for index, item in enumerate(poison):
        batch += [good_frame(store, f"good-{index}"), item]
    batch.append(good_frame(store, "good-last"))
    send(kafka, batch)

    with fresh_instance() as instance:
        result = run(kafka, local, instance, 0, len(batch))
        assert result.success
        records = landing_records(local)
        assert len(records) == len(batch)
        statuses = {r.offset: r.status for r in records}
        assert {statuses[o] for o in range(0, len(batch), 2)} == {"detected"}  # every good frame
        assert {statuses[o] for o in range(1, len(batch), 2)} == {"error"}  # every poison, with its reason
        letters = dead_letters(kafka)
        assert sorted(json.loads(r.value)["offset"] for r in letters) == list(range(1, len(batch), 2))
        by_offset = {json.loads(r.value)["offset"]: json.loads(r.value) for r in letters}
        assert "RecursionError" in by_offset[1]["reason"]
        assert "over the limit of 40,000,000" in by_offset[17]["reason"]
        big = by_offset[21]
        assert big["value_base64"] is None and big["value_bytes"] == len(garbage)
        assert big["value_sha256"] == sha256_hex(garbage)
        assert all(len(r.value) < 1_000_000 for r in letters)
        assert committed(kafka) == len(batch)

        # A retried run of the same range lands the same records and writes letters with the same keys.
        keys = sorted(r.key for r in letters)
        assert run(kafka, local, instance, 0, len(batch), commit=False).success
        assert len(landing_records(local)) == len(batch)
        again = dead_letters(kafka)
        assert len(again) == 2 * len(letters) and sorted({r.key for r in again}) == keys
        assert keys == sorted(f"{kafka.frames_topic}-0-{o}".encode() for o in range(1, len(batch), 2))


@pytest.mark.results
def test_an_unwritable_dlq_fails_the_run_and_nothing_is_committed(kafka, local):
    store = local.open()
    send(kafka, [good_frame(store, "a"), (b"{not json", []), good_frame(store, "b")])
    admin = kafka.admin()
    try:
        admin.delete_topics([kafka.dlq_topic])
    finally:
        admin.close()
    with fresh_instance() as instance:
        result = run(kafka, local, instance, 0, 3)
    assert not result.success
    assert landing_files(local) == {} and committed(kafka) is None


@pytest.mark.results
def test_a_range_the_log_cannot_give_fails_instead_of_landing_part(kafka, local):
    store = local.open()
    send(kafka, [good_frame(store, f"f{i}") for i in range(3)])
    with fresh_instance() as instance:
        result = run(kafka, local, instance, 0, 5)  # offsets 3 and 4 do not exist
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error
    assert "RangeIncomplete" in failure.cause.message
    assert "offsets 3..4 could not be read" in failure.cause.message
    assert landing_files(local) == {} and committed(kafka) is None


@pytest.mark.results
def test_retention_gaps_are_recorded_and_a_replay_never_shrinks_what_landed(kafka, local):
    store = local.open()
    send(kafka, [good_frame(store, f"f{i}") for i in range(8)])
    with fresh_instance() as instance:
        assert run(kafka, local, instance, 0, 8).success
        before = {r.frame_id for r in landing_records(local)}
        assert len(before) == 8

        admin = kafka.admin()
        try:
            admin.delete_records({TopicPartition(kafka.frames_topic, 0): 5})
        finally:
            admin.close()
        # A replay after retention deleted the range's head: offsets 0..4 are a recorded gap, and
        # the frames they held stay landed.
        assert run(kafka, local, instance, 0, 8, commit=False).success
    assert {r.frame_id for r in landing_records(local)} == before
    (ledger,) = store.list("landing/ranges/")
    entry = json.loads(store.get(ledger))
    assert (entry["range"], entry["deleted"]) == (f"{kafka.frames_topic}-0-0-8", [[0, 5]])
    assert entry["counts"]["deleted_by_retention"] == 5


@pytest.mark.results
def test_two_cameras_with_the_same_file_names_are_two_frames(kafka, local):
    from imgpipeline.defs.tables import from_parquet
    from imgpipeline.defs.warehouse.assets import hourly_tables

    store = local.open()
    send(kafka, [good_frame(store, name, source) for source in ("cam1", "cam2")
                 for name in ("IMG_0001", "IMG_0002")])
    with fresh_instance() as instance:
        assert run(kafka, local, instance, 0, 4).success
        assert dg.materialize([hourly_tables], instance=instance, partition_key="2026-11-20-10:00",
                              resources={"storage": local, "tracking": TrackingResource()}).success
    assert len(landing_records(local)) == 4
    frames = from_parquet(store.get(FRAMES.hour_key(WHEN)))
    assert sorted(zip(frames.column("source_id").to_pylist(), frames.column("frame_id").to_pylist(),
                      strict=True)) == [("cam1", "IMG_0001"), ("cam1", "IMG_0002"),
                                        ("cam2", "IMG_0001"), ("cam2", "IMG_0002")]


@pytest.mark.results
def test_an_inline_frame_never_replaces_a_stored_one(kafka, local):
    store = local.open()
    first, other = sample("zidane.jpg").read_bytes(), sample("bus.jpg").read_bytes()
    stored = FrameMessage("same", "cam9", STAMP, None, None, None, None)
    send(kafka, [(first, stored.to_headers()), (other, stored.to_headers())])
    with fresh_instance() as instance:
        assert run(kafka, local, instance, 0, 2).success
    # The first message for the frame is stored and detected; the second, with other bytes for the
    # same frame, is a duplicate in its hour and never replaces the first one's bytes.
    (record,) = landing_records(local)
    assert (record.offset, record.status) == (0, "detected")
    assert store.get(frame_key("cam9", WHEN, "same")) == first

    # A frame stored by a producer (claim check) and an inline message with other bytes for it: the
    # message is an error with its reason, the stored bytes stay.
    store.put(frame_key("cam9", WHEN, "claimed"), first)
    send(kafka, [(other, FrameMessage("claimed", "cam9", STAMP, None, None, None, None).to_headers())])
    with fresh_instance() as instance:
        assert run(kafka, local, instance, 2, 3).success
    (refused,) = [r for r in landing_records(local) if r.offset == 2]
    assert refused.status == "error" and "already holds a different frame" in refused.error
    assert store.get(frame_key("cam9", WHEN, "claimed")) == first


@pytest.mark.results
def test_a_new_generation_lands_under_names_of_its_own(kafka, local):
    store = local.open()
    send(kafka, [good_frame(store, "f0"), good_frame(store, "f1")])
    with fresh_instance() as instance:
        assert run(kafka, local, instance, 0, 2, generation=3).success
    (key,) = landing_files(local)
    assert key.endswith(f"/{kafka.frames_topic}-0-0-2-g3.jsonl")


def accounted_for(kafka, storage, instance) -> dg.AssetCheckEvaluation:
    """The check offsets_accounted_for, run as its job runs it."""
    from imgpipeline.defs.streaming.assets import kafka_frames
    from imgpipeline.defs.streaming.reconcile import offsets_accounted_for, reconcile_frames

    job = dg.Definitions(assets=[kafka_frames], asset_checks=[offsets_accounted_for],
                         jobs=[reconcile_frames], resources={"kafka": kafka, "storage": storage}
                         ).resolve_job_def("reconcile_frames")
    (evaluation,) = job.execute_in_process(instance=instance).get_asset_check_evaluations()
    return evaluation


def test_reconciliation_names_a_missing_range_and_repair_fills_it(kafka, local):
    from imgpipeline.defs.streaming.reconcile import repair_holes

    store = local.open()
    send(kafka, [good_frame(store, f"f{i}") for i in range(9)])

    with fresh_instance() as instance:
        assert run(kafka, local, instance, 0, 3).success
        # The middle range was launched and failed for good (its retries spent).
        instance.create_run_for_job(detect_frames, run_config=detect_run_config(kafka.frames_topic, 0, 3, 6),
                                    status=dg.DagsterRunStatus.FAILURE)
        assert run(kafka, local, instance, 6, 9).success
        # A later range never commits past the missing one: lag tools see it.
        assert committed(kafka) == 3
        failed = accounted_for(kafka, local, instance)
        assert not failed.passed
        assert failed.metadata["holes"].value == {"0": [[3, 6]]}
        assert failed.metadata["missing_offsets"].value == 3

        lines = []
        resources = run_resources(kafka=kafka, storage=local, detector=DetectorResource.from_env())
        assert repair_holes(instance, resources, max_batch=2, log=lines.append)
        assert "2 repair runs; 0 offsets still missing" in lines[-1]
        assert accounted_for(kafka, local, instance).passed
    assert sorted(r.frame_id for r in landing_records(local)) == [f"f{i}" for i in range(9)]
    assert committed(kafka) == 9


def test_the_repair_sensor_runs_a_range_that_failed_for_good(kafka, local):
    from imgpipeline.defs.streaming.batch_policy import BatchPolicy
    from imgpipeline.defs.streaming.reconcile import REPAIR_BACKOFF_S, build_repair_sensor

    store = local.open()
    send(kafka, [good_frame(store, f"f{i}") for i in range(4)])
    with fresh_instance() as instance:
        assert run(kafka, local, instance, 0, 2).success
        instance.create_run_for_job(detect_frames, run_config=detect_run_config(kafka.frames_topic, 0, 2, 4),
                                    status=dg.DagsterRunStatus.FAILURE)

        def tick(cursor=None):
            with dg.build_sensor_context(instance=instance, cursor=cursor,
                                         resources={"kafka": kafka, "storage": local}) as context:
                return build_repair_sensor(BatchPolicy(fast_lane=False))(context)

        seen = tick()
        assert seen.run_requests == []  # run retries get their time first
        name = f"{kafka.frames_topic}-0-2-4"
        waited = json.dumps({name: {"n": 0, "at": json.loads(seen.cursor)[name]["at"] - REPAIR_BACKOFF_S}})
        (request,) = tick(waited).run_requests
        assert request.run_key == f"repair-{name}-1"
        assert run(kafka, local, instance, 2, 4).success  # what the daemon does with the request
        assert tick(waited).run_requests == [] and json.loads(tick(waited).cursor) == {}
    assert sorted(r.frame_id for r in landing_records(local)) == ["f0", "f1", "f2", "f3"]


@pytest.mark.edge
def test_hostile_letters_stay_bounded_and_the_batch_lands(kafka, local):
    """A 5 MB key and header set of characters JSON escapes twelvefold and a value just under the DLQ's
    limit, from a frames topic that takes 16 MB messages: each letter fits the DLQ, the batch lands."""
    from kafka.admin import ConfigResource, ConfigResourceType

    from imgpipeline.defs.streaming.dead_letters import MAX_DEAD_LETTER_BYTES

    admin = kafka.admin()
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, kafka.frames_topic,
                                            configs={"max.message.bytes": str(16 * 2**20)})])
    finally:
        admin.close()
    store = local.open()
    smile = "\U0001f600"  # four bytes of UTF-8, twelve once JSON-escaped (a surrogate pair)
    key = (smile * 300_000).encode()
    headers = [(f"h{i}" + "\x00" * 200, (smile * 10_000).encode()) for i in range(100)]
    big = b"\xff\xd8" + os.urandom(1_048_000)
    producer = kafka.producer(max_request_size=32 * 2**20)
    for message_key, value, message_headers in [
        (b"cam9", *good_frame(store, "a")),
        (key, b"{not json", headers),
        (b"cam9", *good_frame(store, "b")),
        (b"cam9", big, FrameMessage("big", "cam9", STAMP, None, None, None, None).to_headers()),
        (b"cam9", *good_frame(store, "c")),
    ]:
        producer.send(kafka.frames_topic, key=message_key, value=value, headers=message_headers, partition=0)
    producer.flush()
    producer.close()

    with fresh_instance() as instance:
        assert run(kafka, local, instance, 0, 5).success
    statuses = {r.offset: r.status for r in landing_records(local)}
    assert statuses == {0: "detected", 1: "error", 2: "detected", 3: "error", 4: "detected"}
    letters = dead_letters(kafka)
    assert all(len(r.key) + len(r.value) <= MAX_DEAD_LETTER_BYTES for r in letters)
    hostile, oversized = (json.loads(r.value) for r in sorted(letters, key=lambda r: r.offset))
    assert hostile["reason"].startswith("malformed JSON")
    assert hostile["key"] == {"bytes": len(key), "sha256": sha256_hex(key)}
    assert hostile["headers"] == [[{"bytes": len(name), "sha256": sha256_hex(name.encode())},
                                   {"bytes": len(value), "sha256": sha256_hex(value)}]
                                  for name, value in headers]
    assert base64.b64decode(hostile["value_base64"]) == b"{not json"
    assert (oversized["value_base64"], oversized["value_bytes"]) == (None, len(big))
    assert oversized["value_sha256"] == sha256_hex(big)


@pytest.mark.edge
def test_a_letter_is_measured_as_sent_and_uses_its_room():
    from imgpipeline.defs.streaming.dead_letters import MAX_DEAD_LETTER_BYTES, RECORD_FRAMING, dead_letter
    from imgpipeline.defs.streaming.processing import Incoming

    key = ("\x01" * 2_000_000).encode()
    headers = [("h", b"\x00" * 5_000_000)] + [(f"n{i}", ("\U0001f600" * 200).encode()) for i in range(300)]
    incoming = Incoming("frames", 0, 7, key, b"{", headers, None)
    record_key, value = dead_letter(incoming, "\x00" * 1_000_000, "run")
    letter = json.loads(value)
    assert len(record_key) + len(value) + RECORD_FRAMING <= MAX_DEAD_LETTER_BYTES
    assert letter["reason"].startswith("\x00" * 1000) and letter["reason"].endswith("…")
    assert letter["key"] == {"bytes": len(key), "sha256": sha256_hex(key)}
    assert letter["headers"][0] == ["h", {"bytes": 5_000_000, "sha256": sha256_hex(b"\x00" * 5_000_000)}]
    assert len(letter["headers"]) == 100 and letter["headers_omitted"] == 201
    assert letter["value_base64"] == base64.b64encode(b"{").decode()

    # Values around the bound: each letter fits, and the largest values that fit are still carried.
    def letter_of(size: int) -> tuple[int, bool]:
        incoming = Incoming("frames", 0, 7, b"cam9", b"x" * size, [], None)
        record_key, value = dead_letter(incoming, "bad", "run")
        return len(record_key) + len(value) + RECORD_FRAMING, json.loads(value)["value_base64"] is not None

    sizes = [letter_of(size) for size in range(749_600, 750_000)]
    assert all(sent <= MAX_DEAD_LETTER_BYTES for sent, _ in sizes)
    assert sizes[0][1] and not sizes[-1][1]
    assert max(sent for sent, carried in sizes if carried) > MAX_DEAD_LETTER_BYTES - 4


@pytest.mark.edge
def test_letters_of_two_messages_never_share_a_key(kafka, local):
    """Explicit-URI runs and the generations of a re-created topic reuse positions; their letters'
    keys do not, so a compacted DLQ keeps one letter per message. A retried run's letter replaces its
    first one."""
    store = local.open()
    missing = [store.uri(frame_key("cam9", WHEN, f"missing-{i}")) for i in range(2)]
    send(kafka, [(b"{not json", [])])
    with fresh_instance() as instance:
        for uris in ([missing[0]], [missing[1]], [missing[0]]):  # the last one: the first run retried
            assert detect_frames.execute_in_process(
                run_config={"ops": {"detect": {"config": {"uris": uris}}}}, instance=instance,
                resources=run_resources(kafka=kafka, storage=local,
                                        detector=DetectorResource.from_env())).success
        for generation in (0, 1, 1):
            assert run(kafka, local, instance, 0, 1, generation=generation).success
    letters = dead_letters(kafka)
    keys = [r.key for r in letters]
    assert len(keys) == 6 and len(set(keys)) == 4
    assert keys[0] == keys[2] and keys[4] == keys[5]
    compacted = {r.key: json.loads(r.value) for r in letters}  # what compaction keeps: the last per key
    reasons = [letter["reason"] for letter in compacted.values()]
    assert [sum(f"{name}.jpg does not exist" in reason for reason in reasons)
            for name in ("missing-0", "missing-1")] == [1, 1]
    assert sum(reason.startswith("malformed JSON") for reason in reasons) == 2  # generations 0 and 1


@pytest.mark.edge
def test_an_object_the_store_refuses_alone_is_that_frame_s_error(kafka, services):
    """A key the store's policy denies and an archived object are their frames' errors; a store that
    refuses every read, or a bucket gone, fails the run: nothing lands, is dead-lettered or committed."""
    denied, archived = frame_key("cam9", WHEN, "denied"), frame_key("cam9", WHEN, "archived")
    with s3_user(denied=[denied]) as storage:
        store = storage.open()
        frames = [good_frame(store, name) for name in ("a", "denied", "archived", "b")]
        store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{archived}",
                                Body=sample("zidane.jpg").read_bytes(), StorageClass="GLACIER")
        send(kafka, frames)
        with fresh_instance() as instance:
            assert run(kafka, storage, instance, 0, 4).success
        records = {r.frame_id: r for r in landing_records(storage)}
        assert {name: r.status for name, r in records.items()} == {
            "a": "detected", "denied": "error", "archived": "error", "b": "detected"}
        assert "AccessDenied" in records["denied"].error
        assert "InvalidObjectState" in records["archived"].error
        reasons = {json.loads(r.value)["offset"]: json.loads(r.value)["reason"] for r in dead_letters(kafka)}
        assert reasons == {1: records["denied"].error, 2: records["archived"].error}
        assert committed(kafka) == 4

    with s3_user(denied=["*"]) as storage:
        store = storage.open()
        send(kafka, [good_frame(store, "c")])
        with fresh_instance() as instance:
            result = run(kafka, storage, instance, 4, 5)
        assert not result.success
        # The run's first read is a look at the frame's day (is it retired?): a HEAD, whose refusal has no
        # body, so S3 says 403 Forbidden where a GET says AccessDenied.
        cause = result.get_step_failure_events()[0].event_specific_data.error.cause.message
        assert "AccessDenied" in cause or "(403)" in cause and "HeadObject" in cause, cause
        assert landing_files(storage) == {} and committed(kafka) == 4
        assert len(dead_letters(kafka)) == 2  # a frame that is retried is no bad input

    # The bucket gone: the run fails before a letter is written.
    gone = StorageResource(**{**s3_storage_resource(services).model_dump(),
                              "uri": f"s3://gone-{uuid.uuid4().hex[:8]}/x"})
    uri = gone.open().uri(frame_key("cam9", WHEN, "d"))
    send(kafka, [(FrameMessage("d", "cam9", STAMP, uri, None, None, None).to_json(), [])])
    with fresh_instance() as instance:
        result = run(kafka, gone, instance, 5, 6)
    assert not result.success
    assert "NoSuchBucket" in result.get_step_failure_events()[0].event_specific_data.error.cause.message
    assert len(dead_letters(kafka)) == 2 and committed(kafka) == 4


def materialize_hours(storage, instance, hours) -> list[dg.AssetCheckEvaluation]:
    """The hourly tables of each hour (partition keys), as the automation would make them."""
    from imgpipeline.defs.warehouse.assets import hourly_tables

    evaluations = []
    for hour in sorted(hours):
        result = dg.materialize([hourly_tables], instance=instance, partition_key=hour,
                                resources={"storage": storage, "tracking": TrackingResource()})
        assert result.success
        evaluations += result.get_asset_check_evaluations()
    return evaluations


def frame_rows(storage, when: datetime) -> dict[str, dict]:
    from imgpipeline.defs.tables import from_parquet

    table = from_parquet(storage.open().get(FRAMES.hour_key(when)))
    return {row["frame_id"]: row for row in table.to_pylist()}


@pytest.mark.edge
def test_an_error_never_blocks_the_frame_it_was_about(kafka, local, tmp_path):
    store = local.open()
    data = sample("zidane.jpg").read_bytes()

    def claim(name: str, digest: str | None) -> tuple[bytes, list]:
        uri = store.uri(frame_key("cam9", WHEN, name))
        return FrameMessage(name, "cam9", STAMP, uri, digest, None, None).to_json(), []

    # First sent wrong: the image missing, truncated, or not the bytes the message's sha256 names.
    store.put(frame_key("cam9", WHEN, "truncated"), data[: len(data) // 3])
    store.put(frame_key("cam9", WHEN, "wrong-sha"), data)
    send(kafka, [claim("missing", sha256_hex(data)), claim("truncated", None), claim("wrong-sha", "0" * 64)])
    with fresh_instance() as instance:
        assert run(kafka, local, instance, 0, 3).success
        assert {r.frame_id: r.status for r in landing_records(local)} == {
            "missing": "error", "truncated": "error", "wrong-sha": "error"}

        # Sent again once right: processed, not screened out as duplicates of their errors.
        store.put(frame_key("cam9", WHEN, "missing"), data)
        store.put(frame_key("cam9", WHEN, "truncated"), data)
        names = ("missing", "truncated", "wrong-sha")
        send(kafka, [claim(name, sha256_hex(data)) for name in names])
        assert run(kafka, local, instance, 3, 6).success
        latest = {r.frame_id: r.status for r in landing_records(local) if r.offset >= 3}
        assert latest == dict.fromkeys(names, "detected")

        # A true duplicate, and a later error for a frame already processed: neither lands, and the
        # range ledger names their offsets.
        send(kafka, [claim("missing", sha256_hex(data)), claim("wrong-sha", "0" * 64)])
        assert run(kafka, local, instance, 6, 8).success
        assert not [r for r in landing_records(local) if r.offset >= 6]
        entry = json.loads(store.get(f"landing/ranges/{kafka.frames_topic}/0/6-8.json"))
        assert (entry["counts"]["duplicate"], entry["duplicates"]) == (2, [[6, 8]])
        check = accounted_for(kafka, local, instance)
        assert check.passed and check.metadata["duplicates"].value == 2
        assert check.metadata["duplicate_offsets"].value == {"0": [[6, 8]]}

        # A run of the first range that raced the second (it had not seen its landing) lands its errors
        # after the successes: the warehouse keeps the successes all the same.
        racing = StorageResource(uri=(tmp_path / "racing").as_uri())
        assert run(kafka, racing, instance, 0, 3, commit=False).success
        (key,) = landing_files(racing)
        assert {r.status for r in landing_records(racing)} == {"error"}
        store.put(key, racing.open().get(key))
        processed_at = {(r.frame_id, r.status): r.processed_at for r in landing_records(local)}
        assert processed_at["missing", "error"] > processed_at["missing", "detected"]

        evaluations = materialize_hours(local, instance, {"2026-11-20-10:00"})
    rows = frame_rows(local, WHEN)
    assert {name: (row["status"], row["offset"]) for name, row in rows.items()} == {
        "missing": ("detected", 3), "truncated": ("detected", 4), "wrong-sha": ("detected", 5)}
    assert all(e.passed for e in evaluations), [e.check_name for e in evaluations if not e.passed]


def retire_day_of(storage, hour: datetime, today) -> None:
    """The hour landed and built, then its day's landing deleted by retention (which marks it retired)."""
    from imgpipeline.defs.hours import hour_key
    from imgpipeline.defs.records.keys import landing_key
    from imgpipeline.defs.records.record import LandingRecord
    from imgpipeline.defs.records.retired import is_retired
    from imgpipeline.defs.retention.sweep import DataRetention, sweep
    from imgpipeline.ingest.messages import iso_utc

    store = storage.open()
    kept = LandingRecord(schema=1, frame_id="kept", source_id="cam8", captured_at=iso_utc(hour),
                         processed_at=iso_utc(hour), topic="frames", partition=0, offset=0, status="detected")
    store.put(landing_key(hour, "frames-0-0-1"), kept.to_json() + b"\n")
    with fresh_instance() as instance:
        materialize_hours(storage, instance, {hour_key(hour)})
    sweep(store, DataRetention(), today=today, log=lambda line: None)
    assert is_retired(store, hour.date())


@pytest.mark.edge
def test_a_frame_captured_out_of_range_is_a_row_counted_by_status_and_a_check(kafka, local, tmp_path):
    import subprocess
    import sys
    from datetime import timedelta

    from imgpipeline.defs.hours import hour_key
    from imgpipeline.defs.partitions import hourly_partitions
    from imgpipeline.ingest.messages import iso_utc, parse_time

    store = local.open()
    data = sample("zidane.jpg").read_bytes()
    now = datetime.now(UTC)
    times = {"ancient": datetime(2020, 6, 1, 8, 0, tzinfo=UTC),  # before the partitions' start
             "future": datetime(2099, 1, 1, 12, 0, tzinfo=UTC),  # a camera clock decades ahead
             "month_old": now - timedelta(days=40),  # a camera clock behind: its day's landing retired
             "timely": now}
    retire_day_of(local, times["month_old"].replace(minute=0, second=0, microsecond=0), now.date())
    messages = []
    for name, captured in times.items():
        key = frame_key("cam9", captured, name)
        store.put(key, data)
        messages.append((FrameMessage(name, "cam9", iso_utc(captured), store.uri(key), sha256_hex(data),
                                      None, None).to_json(), []))
    send(kafka, messages)
    with fresh_instance() as instance:
        assert run(kafka, local, instance, 0, 4).success
        records = {r.frame_id: r for r in landing_records(local)}
        # Every landing file lies in an hour a partition reads.
        for key in landing_files(local):
            folder = "/".join(key.split("/")[2:4])  # landing/metadata/dt=…/hour=…/<range>.jsonl
            hour = datetime.strptime(folder, "dt=%Y-%m-%d/hour=%H").replace(tzinfo=UTC)
            assert hourly_partitions.has_partition_key(hour_key(hour)), key
        assert {name: r.status for name, r in records.items()} == {
            "ancient": "out_of_range", "future": "out_of_range", "month_old": "out_of_range",
            "timely": "detected"}
        assert "before the partitions' start" in records["ancient"].error
        assert "IMGPIPELINE_FUTURE_LIMIT_MIN" in records["future"].error
        assert "whose landing retention deleted" in records["month_old"].error
        hours = {hour_key(r.event_hour) for r in records.values()}
        evaluations = materialize_hours(local, instance, hours)

    rows = {}
    for hour in hours:
        rows |= frame_rows(local, datetime.strptime(hour, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC))
    assert {name: row["status"] for name, row in rows.items()} == {
        "ancient": "out_of_range", "future": "out_of_range", "month_old": "out_of_range",
        "timely": "detected"}
    assert rows["future"]["captured_at"] == times["future"]  # the time as sent, in the hour it arrived
    for name in ("ancient", "future", "month_old"):
        arrived = parse_time(records[name].ingested_at).replace(minute=0, second=0, microsecond=0)
        assert hour_key(arrived) in hours
    (check,) = [e for e in evaluations if e.check_name == "captured_in_range" and not e.passed]
    assert check.severity == dg.AssetCheckSeverity.WARN
    counted = sum(f["frames"] for f in check.metadata["failures"].value.values())
    assert counted == 3

    env = {**os.environ, "IMGPIPELINE_HOME": str(tmp_path / "home"), "IMGPIPELINE_STORAGE_URI": local.uri,
           "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic}
    done = subprocess.run([sys.executable, "-m", "imgpipeline.cli", "status", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout)
    assert report["sources"]["cam9"]["out_of_range"] == 3
    assert done.returncode == 1 and any("cam9: 3 frames" in p for p in report["problems"])
