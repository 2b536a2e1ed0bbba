"""Overload: frames arriving faster than they are detected are shed by the declared policy, and every
shed frame is still a record with status `shed` and its reason, so the counts reconcile."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict
from types import SimpleNamespace

import pytest

from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.processing import FrameProcessor, Incoming, Shedding
from imgpipeline.ingest.messages import FrameMessage
from imgpipeline.ingest.producer import FrameProducer, Ledger
from imgpipeline.resources import StorageResource
from imgpipeline.vision.detector import Identity
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import drain, landing_records, video_backlog

pytestmark = pytest.mark.instance

REASON = re.compile(r"shed: waited (\d+\.\d) s on the topic, over the bound of 0\.5 s; 1 frame in (\d+) "
                    r"of this source detected")


def test_one_in_k_per_source_once_late():
    shedding = Shedding(2.0)

    def decide(source: bytes, waited: float) -> str | None:
        return shedding.reason(source, waited)

    assert [decide(b"a", 1.5) for _ in range(3)] == [None] * 3  # within the bound: all detected
    late = [decide(b"a", 5.0) for _ in range(7)]  # k = 3: the first late frame, then every third
    assert [r is None for r in late] == [True, False, False, True, False, False, True]
    assert "waited 5.0 s" in late[1] and "1 frame in 3" in late[1]
    assert decide(b"b", 5.0) is None  # another source keeps its own count
    # Back on time, then late again: the first late frame is detected again, then one in k.
    assert [decide(b"a", w) is None for w in (1.0, 5.0, 5.0, 5.0, 5.0)] == [True, True, False, False, True]

    old = [Incoming("frames", 0, i, b"a", b"{}", [], 1000) for i in range(3)]  # queued since 1970
    assert [m.shed for m in Shedding(0).mark(iter(old))] == [None] * 3  # 0: shedding is off
    assert [m.shed is None for m in Shedding(60).mark(iter(old))] == [True, False, False]


@pytest.mark.integration
@pytest.mark.results
def test_overload_sheds_frames_and_accounts_for_every_one(kafka, storage, tmp_path):
    # Two cameras send as fast as they can for a bounded time, several times faster than one machine
    # detects, while the sensor and its runs work as the daemon would run them.
    sources = {name: video_backlog(240, source=name) for name in ("cam-a", "cam-b")}
    policy = BatchPolicy(fast_lane=False,
                         max_batch=60, max_backlog_batch=120, max_wait_s=0, watch_s=0, shed_after_s=0.5)
    sent: dict[str, float] = {}

    def camera(name: str) -> None:
        producer = FrameProducer(kafka, storage, name, ledger=Ledger(tmp_path / f"{name}.sent"),
                                 flush_every=10)
        for frame in sources[name]:
            producer.send(frame)
            sent[frame.frame_id] = time.time()
        producer.close()

    cameras = [threading.Thread(target=camera, args=(name,)) for name in sources]
    for thread in cameras:
        thread.start()
    runs, cursor = [], None
    with fresh_instance() as instance:
        while any(thread.is_alive() for thread in cameras):
            more, cursor = drain(kafka, storage, instance, policy, cursor, max_ticks=200)
            runs += more
        more, cursor = drain(kafka, storage, instance, policy, cursor, max_ticks=200)
        runs += more
    assert len(sent) == 480

    records = landing_records(storage)
    ids = [r.frame_id for r in records]
    assert len(ids) == len(set(ids)) == 480 and set(ids) == set(sent)  # nothing lost, nothing twice
    statuses = Counter(r.status for r in records)
    assert set(statuses) <= {"detected", "shed", "skipped_dark"}
    assert statuses["shed"] > 0 and statuses["detected"] > 0

    # The runs' own counts reconcile with the records.
    counted = Counter()
    for _, outcome in runs:
        counted.update(outcome.output_for_node("detect")["counts"])
    assert counted["read"] == 480 and counted["shed"] == statuses["shed"]
    assert counted["detected"] + counted["skipped_dark"] + counted["shed"] == 480
    # Runs grow under the backlog, never past their cap.
    largest = max(c["read"] for c in (o.output_for_node("detect")["counts"] for _, o in runs))
    assert 60 < largest <= 120

    # Each shed frame says why; per source, no more than k − 1 frames in a row are shed.
    by_source = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_source[record.source_id].append(record)
    for name, frames in by_source.items():
        run_of_shed = 0
        for record in frames:
            if record.status != "shed":
                run_of_shed = 0
                assert record.error is None
                continue
            match = REASON.fullmatch(record.error)
            assert match, record.error
            assert float(match.group(1)) > 0.5 and int(match.group(2)) >= 2
            run_of_shed += 1
            assert run_of_shed < int(match.group(2)), (name, record.frame_id)
            assert record.uri and record.detections == []  # the frame itself is kept
        assert any(r.status == "detected" for r in frames), name



def test_a_shed_frame_is_still_screened_as_untrusted_input(tmp_path):
    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    # The detector is never asked: a shed frame is not detected.
    recorder = SimpleNamespace(identity=Identity("yolov4-tiny-416", "0" * 64, "opencv", "f32"))
    processor = FrameProcessor(store, recorder, run_id="r", dark_threshold=10, annotate=False, max_bytes=1000)

    def shed(uri: str | None, inline: bytes | None = None, sha256: str | None = None):
        message = FrameMessage("f1", "cam", "2026-11-22T10:00:00.000Z", uri, sha256, None, None)
        value, headers = (inline, message.to_headers()) if inline is not None else (message.to_json(), [])
        arrived_ms = 1_795_341_601_000  # 2026-11-22T10:00:01Z: a second after its capture
        return processor.prepare(Incoming("frames", 0, 7, b"cam", value, headers, arrived_ms, shed="shed: …"))

    assert shed(store.uri("frames/cam/2026-11-22/f1.jpg")).record.status == "shed"
    root = store.uri("f.jpg").removesuffix("f.jpg")
    for uri in ("file:///etc/passwd", root + "frames/../../secret.jpg", root + "f.jpg?x=1"):
        prepared = shed(uri)
        assert prepared.record is None and "URI" in prepared.error, uri  # an error, dead-lettered
    assert "sha256" in shed(None, b"jpeg bytes", sha256="0" * 64).error
    assert "over the limit" in shed(None, b"x" * 1001).error
