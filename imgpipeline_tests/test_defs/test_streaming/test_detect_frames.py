"""The streaming path on the real broker and storage: producers → frames_sensor → detect_frames."""

from __future__ import annotations

import base64
import json
from collections import Counter
from datetime import UTC, datetime

import pytest
from kafka import TopicPartition

from imgpipeline.cli.samples import sample
from imgpipeline.ingest.messages import FrameMessage, frame_key, sha256_hex
from imgpipeline.ingest.producer import FrameProducer, Ledger
from imgpipeline.ingest.sources import image_frames, video_frames
from imgpipeline.resources import DetectorResource, StorageResource
from imgpipeline.vision import int8
from imgpipeline.vision.model_files import INT8_XML, expected_sha256
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import drain, landing_files, landing_records, run_resources

pytestmark = [pytest.mark.integration, pytest.mark.instance, pytest.mark.results]
START = datetime(2026, 11, 20, 23, 59, 55, tzinfo=UTC)


def producer(kafka, storage, source, tmp_path, **kwargs) -> FrameProducer:
    return FrameProducer(kafka, storage, source, ledger=Ledger(tmp_path / f"{source}.sent"), **kwargs)


def read_all(kafka, topic) -> list:
    consumer = kafka.consumer(group_id=None)
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    ends = consumer.end_offsets(tps)
    consumer.assign(tps)
    consumer.seek_to_beginning()
    records = []
    while len(records) < sum(ends.values()):
        batch = consumer.poll(timeout_ms=5000)
        assert batch, "fewer records than the end offsets say"
        records += [r for rs in batch.values() for r in rs]
    consumer.close()
    return records


def test_video_and_photos_are_detected_exactly_once(kafka, storage, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("bus.jpg", "zidane.jpg"):
        (photos / name).write_bytes(sample(name).read_bytes())
    video = producer(kafka, storage, "bikes", tmp_path).send_all(
        video_frames(str(sample("bikes.mp4")), "bikes", start=START), progress=False)
    stills = producer(kafka, storage, "street", tmp_path).send_all(
        image_frames(photos, "street"), progress=False)
    assert (video.sent, stills.sent, video.failed + stills.failed) == (250, 2, 0)

    with fresh_instance() as instance:
        runs, _ = drain(kafka, storage, instance)
    # bikes and street are keyed to partitions; 250 frames → ranges of at most 100.
    assert all(len(r.run_key.split("-")) >= 4 for r, _ in runs)
    assert sum(o.output_for_node("detect")["counts"]["read"] for _, o in runs) == 252

    records = landing_records(storage)
    ids = Counter(r.frame_id for r in records)
    assert set(ids) == {f"bikes-{i:06d}" for i in range(1, 251)} | {"bus", "zidane"}
    assert max(ids.values()) == 1
    assert {r.status for r in records} == {"detected"}
    # Every record names what detected it: the default engine, its precision and the model it ran, by
    # sha256 (SHA256SUMS's, or for the INT8 model made here, its record's).
    engine = DetectorResource.from_env()
    path, digest = engine.model_file()
    made_here = int8.read_record(path.parent) if path.name == INT8_XML else None
    assert digest == (made_here["sha256"] if made_here else expected_sha256(path.name, path.parent))
    assert {(r.model, r.model_sha256, r.engine, r.precision) for r in records} == {
        ("yolov4-tiny-416", digest, engine.engine, engine.load().identity.precision)}
    # The video crosses midnight: frames land in the hour of their captured_at.
    hours = {k.split("/")[2] + "/" + k.split("/")[3] for k in landing_files(storage)}
    assert {"dt=2026-11-20/hour=23", "dt=2026-11-21/hour=00"} <= hours

    video_classes = Counter(d["class_name"] for r in records if r.source_id == "bikes"
                            for d in r.detections)
    assert video_classes["person"] > 50 and video_classes["car"] > 20 and video_classes["bicycle"] > 20
    bus = next(r for r in records if r.frame_id == "bus")
    assert Counter(d["class_name"] for d in bus.detections)["person"] >= 3
    assert "bus" in {d["class_name"] for d in bus.detections}
    assert bus.object_count == len(bus.detections)
    assert bus.width == 810 and bus.height == 1080

    # The consumer group has committed every range, so standard lag tools see zero lag.
    consumer = kafka.consumer()
    tps = [TopicPartition(kafka.frames_topic, p) for p in (0, 1)]
    ends = consumer.end_offsets(tps)
    assert {tp: consumer.committed(tp) or 0 for tp in tps} == ends
    consumer.close()


def test_duplicates_and_replays_add_no_records(kafka, storage, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("bus.jpg", "zidane.jpg"):
        (photos / name).write_bytes(sample(name).read_bytes())
    frames = list(video_frames(str(sample("bikes.mp4")), "bikes", start=START, max_frames=30))
    frames += list(image_frames(photos, "bikes"))
    first = producer(kafka, storage, "bikes", tmp_path)
    first.send_all(frames, progress=False)
    # Every message a second time (a producer retry, a replayed source)…
    again = producer(kafka, storage, "bikes", tmp_path / "other-ledger")
    again.send_all(frames, progress=False)
    # …and the same producer re-run over the same input sends nothing.
    rerun = producer(kafka, storage, "bikes", tmp_path).send_all(frames, progress=False)
    assert (first.summary.sent, again.summary.sent, rerun.sent, rerun.already_present) == (32, 32, 0, 32)

    with fresh_instance() as instance:
        runs, _ = drain(kafka, storage, instance)
        records = landing_records(storage)
        assert len(records) == 32 == len({r.frame_id for r in records})
        counts = [o.output_for_node("detect")["counts"] for _, o in runs]
        assert sum(c["duplicate"] for c in counts) == 32

        # Re-running every finished range rewrites the same files with the same frames.
        before = landing_files(storage)
        for request, _ in runs:
            again_run = drain_one(request, kafka, storage, instance)
            assert again_run.success
        after = landing_files(storage)
    assert set(after) == set(before)
    for key in before:
        assert strip_run(before[key]) == strip_run(after[key])


def test_frames_another_run_landed_while_this_one_detected_them_are_its_duplicates(kafka, storage, tmp_path):
    """Two runs of one partition side by side (a takeover after a daemon was killed), each holding one copy
    of the same frames: the second lands while the first detects its last frame. The first finds them
    landed meanwhile and accounts for its copies as duplicates: every frame lands once."""
    import dagster as dg

    from imgpipeline.defs.records.ledger import accounted_ranges
    from imgpipeline.defs.streaming.detect_frames import Lane, detect_range, frame_processor
    from imgpipeline.defs.streaming.processing import FrameProcessor
    from imgpipeline.vision.quality import DARK_THRESHOLD

    frames = list(video_frames(str(sample("bikes.mp4")), "bikes", start=START, max_frames=12))
    for ledger in ("a", "b"):  # a producer that sent them again
        producer(kafka, storage, "bikes", tmp_path / ledger).send_all(frames, progress=False)
    (partition, end), = [(tp.partition, n) for tp, n in end_offsets(kafka).items() if n]
    assert end == 24
    topic, store, counts, consumers = kafka.frames_topic, storage.open(), {}, []

    class SecondLandsFirst(FrameProcessor):
        """The first run's frames: as it detects the range's last one, the second run (with a detector of
        its own) detects and lands its whole range."""

        def finish(self, prepared):
            record = super().finish(prepared)
            if prepared.incoming.offset == 11:
                counts["second"], _ = detect_range(self.second, partition, 12, 24)
            return record

    @dg.op
    def side_by_side(context) -> None:
        def lane(processor) -> Lane:
            consumers.append(kafka.consumer(auto_offset_reset="none"))
            return Lane(context, kafka, store, processor, consumers[-1], topic)

        detector = DetectorResource.from_env()
        first = SecondLandsFirst(store, detector.load_pool(), run_id=context.run_id,
                                 dark_threshold=DARK_THRESHOLD, annotate=False,
                                 max_bytes=storage.max_frame_bytes, max_pixels=detector.max_pixels)
        first.second = lane(frame_processor(context, store, storage, detector))
        counts["first"], _ = detect_range(lane(first), partition, 0, 12)

    try:
        assert dg.GraphDefinition(name="side_by_side", node_defs=[side_by_side]).to_job(
            executor_def=dg.in_process_executor).execute_in_process().success
    finally:
        for consumer in consumers:
            consumer.close()
    landed = Counter(r.frame_id for r in landing_records(storage) if r.processed)
    assert landed == Counter({f.frame_id: 1 for f in frames})
    assert (counts["second"]["duplicate"], counts["first"]["duplicate"]) == (0, 12)
    assert counts["first"]["read"] == 12
    assert sum(counts["first"][status] for status in ("detected", "skipped_dark")) == 0
    entries = [json.loads(store.get(key)) for key in store.list(f"landing/ranges/{topic}/{partition}/")]
    assert sorted(span for entry in entries for span in entry.get("duplicates", [])) == [[0, 12]]
    assert accounted_ranges(store, topic, partition) == [(0, 12), (12, 24)]
    assert [key.rsplit("/", 1)[-1] for key in landing_files(storage)] == [f"{topic}-{partition}-12-24.jsonl"]
    consumer = kafka.consumer()
    try:
        assert consumer.committed(TopicPartition(topic, partition)) == 24
    finally:
        consumer.close()


def end_offsets(kafka) -> dict:
    consumer = kafka.consumer(group_id=None)
    try:
        return consumer.end_offsets([TopicPartition(kafka.frames_topic, p)
                                     for p in consumer.partitions_for_topic(kafka.frames_topic)])
    finally:
        consumer.close()


def drain_one(request, kafka, storage, instance):
    from imgpipeline.defs.streaming.detect_frames import detect_frames
    from imgpipeline.resources import DetectorResource

    return detect_frames.execute_in_process(
        run_config=request.run_config, instance=instance, tags=request.tags,
        resources=run_resources(kafka=kafka, storage=storage, detector=DetectorResource.from_env()),
    )


def strip_run(body: bytes) -> list[dict]:
    """Records without the fields that name the run and its time."""
    return [
        {k: v for k, v in json.loads(line).items() if k not in ("run_id", "processed_at")}
        for line in body.splitlines()
    ]


def test_bad_messages_go_to_the_dlq_and_the_batch_goes_on(kafka, storage):
    storage = StorageResource(**{**storage.model_dump(), "max_frame_bytes": 200_000})
    store = storage.open()
    good = sample("zidane.jpg").read_bytes()
    good_key = frame_key("cam9", START, "good")
    huge_key = frame_key("cam9", START, "huge")
    store.put(good_key, good)
    store.put(huge_key, b"\xff" * 300_000)
    when = "2026-11-20T23:59:58.000Z"

    def message(frame_id, uri, sha=None):
        return FrameMessage(frame_id, "cam9", when, uri, sha, None, None).to_json()

    bad = [
        (b"{this is not json", "malformed JSON"),
        (json.dumps({"schema": 7, "frame_id": "x", "source_id": "cam9", "captured_at": when,
                     "uri": "s3://x/y"}).encode(), "unknown schema version 7"),
        (message("passwd", "file:///etc/passwd"), "outside the storage root"),
        (message("trav", store.root_uri + "/frames/../../secret.jpg"), "not a normalized path"),
        (message("missing", store.uri(frame_key("cam9", START, "missing"))), "does not exist"),
        (message("shabad", store.uri(good_key), sha="0" * 64), "do not match the message's sha256"),
        (message("huge", store.uri(huge_key)), "over the limit of 200000"),
    ]
    sender = kafka.producer()
    for value, _ in bad:
        sender.send(kafka.frames_topic, key=b"cam9", value=value)
    corrupt = FrameMessage("inline-bad", "cam9", when, None, None, None, None)
    sender.send(kafka.frames_topic, key=b"cam9", value=b"\xff\xd8garbage", headers=corrupt.to_headers())
    sender.send(kafka.frames_topic, key=b"cam9", value=message("good", store.uri(good_key), sha256_hex(good)))
    inline = FrameMessage("inline-ok", "cam9", when, None, sha256_hex(good), None, None)
    sender.send(kafka.frames_topic, key=b"cam9", value=good, headers=inline.to_headers())
    sender.flush()
    sender.close()

    with fresh_instance() as instance:
        runs, _ = drain(kafka, storage, instance)
    assert all(outcome.success for _, outcome in runs)

    records = {r.frame_id: r for r in landing_records(storage)}
    assert len(records) == 10
    assert records["good"].status == "detected" and records["good"].object_count >= 2
    assert records["inline-ok"].status == "detected"
    # An inline frame is stored before processing, so its record points at its bytes.
    assert records["inline-ok"].uri == store.uri(frame_key("cam9", START, "inline-ok"))
    assert store.get(frame_key("cam9", START, "inline-ok")) == good
    errors = [r for r in records.values() if r.status == "error"]
    assert len(errors) == 8

    dlq = read_all(kafka, kafka.dlq_topic)
    letters = sorted((json.loads(r.value) for r in dlq), key=lambda d: d["offset"])
    assert [d["offset"] for d in letters] == list(range(8))
    for letter, (value, fragment) in zip(letters, bad + [(b"\xff\xd8garbage", "cannot decode")],
                                         strict=True):
        assert fragment in letter["reason"], (fragment, letter["reason"])
        assert (letter["topic"], letter["key"]) == (kafka.frames_topic, "cam9")
        assert base64.b64decode(letter["value_base64"]) == value
    # The unparseable message is identified by where it was read.
    partition = letters[0]["partition"]
    assert records[f"{kafka.frames_topic}-{partition}-0"].error.startswith("malformed JSON")


def test_explicit_frame_uris_are_processed(kafka, storage):
    from imgpipeline.defs.streaming.detect_frames import detect_frames
    from imgpipeline.resources import DetectorResource

    store = storage.open()
    key = frame_key("cam5", START, "cam5-000001")
    store.put(key, sample("bus.jpg").read_bytes())
    uris = [store.uri(key), "file:///etc/passwd"]
    with fresh_instance() as instance:
        result = detect_frames.execute_in_process(
            run_config={"ops": {"detect": {"config": {"uris": uris, "annotate": True}}}},
            instance=instance,
            resources=run_resources(kafka=kafka, storage=storage, detector=DetectorResource.from_env()),
        )
    assert result.success
    records = {r.frame_id: r for r in landing_records(storage)}
    assert records["cam5-000001"].status == "detected"
    assert records["cam5-000001"].source_id == "cam5"
    assert "bus" in {d["class_name"] for d in records["cam5-000001"].detections}
    assert records["uri-1"].status == "error" and "outside the storage root" in records["uri-1"].error
    # The annotated derivative is a decodable image of the same size.
    annotated = store.get(f"annotated/cam5/{START.date()}/cam5-000001.jpg")
    from imgpipeline.vision.quality import decode_image

    assert decode_image(annotated).shape == decode_image(sample("bus.jpg").read_bytes()).shape


def test_a_frame_sent_again_past_the_screening_window_lands_again_and_the_tables_keep_one_row(
        kafka, tmp_path, monkeypatch):
    import dagster as dg

    from imgpipeline.defs.warehouse.assets import hourly_tables
    from imgpipeline.resources import TrackingResource

    monkeypatch.setenv("IMGPIPELINE_DUPLICATE_WINDOW", "10")
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    frames = list(video_frames(str(sample("bikes.mp4")), "bikes", start=START, max_frames=50))
    with fresh_instance() as instance:
        for part, ledger in ((frames[:30], "a"), (frames[30:], "b"), (frames[:5] + frames[30:35], "c")):
            producer(kafka, storage, "bikes", tmp_path / ledger).send_all(part, progress=False)
            runs, _ = drain(kafka, storage, instance)
        # Offsets 50-59 of the source's partition: frames 30-34 were landed by the range 30-50, within 10
        # offsets of it: duplicates; frames 0-4 by the range 0-30, past the window: landed again.
        (request, outcome), = runs
        assert request.run_key.split("-")[-2:] == ["50", "60"]
        assert outcome.output_for_node("detect")["counts"]["duplicate"] == 5
        landed = Counter(r.frame_id for r in landing_records(storage))
        assert len(landed) == 50 and sorted(f for f, n in landed.items() if n > 1) == sorted(
            f.frame_id for f in frames[:5])
        result = dg.materialize([hourly_tables], instance=instance, tags={
            "dagster/asset_partition_range_start": "2026-11-20-23:00",
            "dagster/asset_partition_range_end": "2026-11-21-00:00"},
            resources={"storage": storage, "tracking": TrackingResource()})
        assert result.success
    from imgpipeline.defs.tables.views import connect

    con = connect(storage)
    assert con.sql("SELECT count(*), count(DISTINCT frame_id) FROM frames").fetchone() == (50, 50)
