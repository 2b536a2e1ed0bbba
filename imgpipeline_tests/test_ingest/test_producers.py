"""Producers: folder, watched folder, video sampling, resize, and the CLI's summary line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest
from kafka import TopicPartition

from imgpipeline import ConfigError
from imgpipeline.cli.samples import sample
from imgpipeline.ingest.producer import Frame, FrameProducer, Ledger
from imgpipeline.ingest.sources import image_frames, parse_size, video_frames, watch_frames


def message_count(kafka) -> int:
    consumer = kafka.consumer()
    ends = consumer.end_offsets([TopicPartition(kafka.frames_topic, p) for p in (0, 1)])
    consumer.close()
    return sum(ends.values())


def test_video_sampling_and_timestamps():
    start = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    frames = list(video_frames(str(sample("bikes.mp4")), "cam1", fps=5, start=start))
    assert len(frames) == 50
    assert frames[0].frame_id == "cam1-000001" and frames[1].frame_id == "cam1-000006"
    pairs = zip(frames, frames[1:], strict=False)
    steps = {round((b.captured - a.captured).total_seconds(), 2) for a, b in pairs}
    assert steps == {0.2}
    assert frames[0].captured == start and (frames[0].width, frames[0].height) == (640, 272)
    assert len(list(video_frames(str(sample("bikes.mp4")), "cam1", max_frames=7))) == 7


def test_resize_and_sequential_ids(tmp_path):
    (tmp_path / "b.jpg").write_bytes(sample("bus.jpg").read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    frames = list(image_frames(tmp_path, "cam2", sequential=True, max_size=parse_size("400x400")))
    good = [f for f in frames if not isinstance(f, Exception)]
    assert [f.frame_id for f in good] == ["cam2-000001"]
    assert (good[0].width, good[0].height) == (300, 400)  # 810x1080 shrunk to fit, aspect kept
    assert any(isinstance(f, Exception) and "broken.jpg" in str(f) for f in frames)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("400")


@pytest.mark.integration
def test_watch_sends_new_files_once_across_restarts(kafka, tmp_path):
    from imgpipeline.resources import StorageResource

    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "first.jpg").write_bytes(sample("zidane.jpg").read_bytes())
    ledger = tmp_path / "cam3.sent"

    def watch_for(seconds, add=None):
        stop_at = time.monotonic() + seconds
        producer = FrameProducer(kafka, storage, "cam3", ledger=Ledger(ledger), flush_every=1)
        if add:
            threading.Timer(0.5, add).start()
        return producer.send_all(
            watch_frames(folder, interval_s=0.1, stop=lambda: time.monotonic() > stop_at), progress=False)

    first = watch_for(1.5, add=lambda: (folder / "second.jpg").write_bytes(sample("bus.jpg").read_bytes()))
    assert (first.sent, first.already_present) == (2, 0)
    restarted = watch_for(1.0)
    assert (restarted.sent, restarted.already_present) == (0, 2)
    assert message_count(kafka) == 2


@pytest.mark.integration
def test_cli_produce_prints_a_summary_and_sends_nothing_twice(kafka, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("bus.jpg", "zidane.jpg"):
        (photos / name).write_bytes(sample(name).read_bytes())
    env = {**os.environ, "IMGPIPELINE_HOME": str(tmp_path),
           "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic,
           "IMGPIPELINE_STORAGE_URI": (tmp_path / "store").as_uri()}

    def produce():
        result = subprocess.run([sys.executable, "-m", "imgpipeline.cli", "produce", "images", str(photos),
                                 "--source", "cam4"], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    assert produce() == f"cam4 → {kafka.frames_topic}: sent 2, already present 0, failed 0"
    assert produce() == f"cam4 → {kafka.frames_topic}: sent 0, already present 2, failed 0"
    assert message_count(kafka) == 2
    stored = sorted(p.name for p in (tmp_path / "store" / "frames" / "cam4").rglob("*.jpg"))
    assert stored == ["bus.jpg", "zidane.jpg"]


def test_a_video_file_keeps_its_start_over_runs_and_a_changed_file_gets_a_new_one(tmp_path):
    video = tmp_path / "bikes.mp4"
    video.write_bytes(sample("bikes.mp4").read_bytes())
    ledger = Ledger(tmp_path / "producers" / "frames" / "cam.sent")
    first = ledger.start_of(str(video))
    assert abs((datetime.now(UTC) - first).total_seconds()) < 60
    time.sleep(0.01)  # scenario: a later run, whose own start would be later
    assert Ledger(ledger.path).start_of(str(video)) == first  # a later run, a new process
    os.utime(video, ns=(time.time_ns(), time.time_ns() + 10**9))  # the file written again
    assert Ledger(ledger.path).start_of(str(video)) > first
    other = Ledger(tmp_path / "producers" / "frames" / "other.sent")
    assert other.start_of(str(video)) != first  # each source its own
    given = datetime(2026, 11, 20, 10, 59, 55, tzinfo=UTC)  # --start-time: used, and kept for later runs
    assert other.start_of(str(video), given) == given == Ledger(other.path).start_of(str(video))

    # Producers of one source at once, each with a file of its own: every file keeps its start.
    copies = [tmp_path / f"part-{i}.mp4" for i in range(8)]
    for copy in copies:
        copy.write_bytes(b"not decoded here")
    starts: dict = {}
    threads = [threading.Thread(target=lambda c=c: starts.update({c: Ledger(ledger.path).start_of(str(c))}))
               for c in copies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(Ledger(ledger.path).start_of(str(c)) == starts[c] for c in copies)
    # Bounded: the newest files of the source are kept, the oldest forgotten first.
    bounded = Ledger(tmp_path / "producers" / "frames" / "bounded.sent", starts_kept=3)
    kept = {c: bounded.start_of(str(c)) for c in copies[:4]}
    assert len(json.loads(bounded.path.with_name("bounded.sent.starts").read_text())) == 3
    assert all(bounded.start_of(str(c)) == kept[c] for c in copies[1:4])
    time.sleep(0.01)  # scenario: a start taken again is a later one
    assert bounded.start_of(str(copies[0])) > kept[copies[0]]  # forgotten: a new start

    ledger.path.with_name("cam.sent.starts").write_text("{not json")
    with pytest.raises(ConfigError, match=r"cam\.sent\.starts.*delete it"):
        Ledger(ledger.path).start_of(str(video))


@pytest.mark.integration
def test_a_producer_never_replaces_a_stored_frame(kafka, tmp_path):
    from datetime import UTC, datetime

    from imgpipeline.ingest.messages import frame_key
    from imgpipeline.resources import StorageResource

    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    when = datetime(2026, 11, 20, 10, tzinfo=UTC)
    storage.open().put(frame_key("cam7", when, "f1"), b"the first frame's bytes")
    producer = FrameProducer(kafka, storage, "cam7", ledger=Ledger(tmp_path / "sent"))
    summary = producer.send_all([Frame("f1", b"other bytes", when, 1, 1), Frame("f2", b"new", when, 1, 1)],
                                progress=False)
    assert (summary.sent, summary.failed) == (1, 1)
    assert "already holds a different frame" in summary.failures[0]
    assert storage.open().get(frame_key("cam7", when, "f1")) == b"the first frame's bytes"


@pytest.mark.integration
def test_a_frame_over_the_topics_message_limit_fails_alone_and_is_not_ledgered(kafka, tmp_path):
    import numpy as np
    from kafka.admin import ConfigResource, ConfigResourceType

    from imgpipeline.resources import StorageResource
    from imgpipeline.vision.quality import encode_jpeg

    admin = kafka.admin()
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, kafka.frames_topic,
                                        configs={"max.message.bytes": "20000"})])
    admin.close()
    when = datetime(2026, 11, 20, 10, tzinfo=UTC)
    small = encode_jpeg(np.full((48, 64, 3), 90, np.uint8))
    noise = encode_jpeg(np.random.default_rng(7).integers(0, 255, (240, 320, 3), np.uint8))
    assert len(small) < 10_000 < 20_000 < len(noise) < 1_000_000  # the broker refuses it, not the client
    frames = [Frame(f"f{i}", small + bytes([i]), when, 64, 48) for i in range(4)]
    frames.insert(2, Frame("big", noise, when, 320, 240))
    ledger = tmp_path / "sent"
    producer = FrameProducer(kafka, StorageResource(uri=(tmp_path / "store").as_uri()), "cam8", inline=True,
                             ledger=Ledger(ledger), flush_every=2)
    summary = producer.send_all(frames, progress=False)
    assert (summary.sent, summary.failed) == (4, 1)
    (failure,) = summary.failures
    assert failure.startswith("big: Kafka refused it") and "max.message.bytes" in failure
    assert sorted(frame_id for frame_id, _ in Ledger(ledger).entries()) == ["f0", "f1", "f2", "f3"]
    assert message_count(kafka) == 4


def test_the_ledger_reads_only_the_days_looked_up_and_holds_few(tmp_path):
    """Kept by capture day: nothing is read at start, a day's file when a frame of that day is looked up,
    at most three days in memory; a line cut short by a kill mid-append is not counted; a one-file ledger
    of before is read for frames captured up to the day it was last written."""
    from datetime import timedelta

    from imgpipeline.ingest.messages import sha256_hex
    from imgpipeline.ingest.producer import DAYS_IN_MEMORY

    def d(name: str) -> str:
        return sha256_hex(name.encode())

    path = tmp_path / "producers" / "frames" / "cam.sent"
    first = datetime(2026, 1, 1, 23, 59, tzinfo=UTC)
    days = [first + timedelta(days=n) for n in range(5)]
    Ledger(path).add([(f"f{n}-{i}", d(f"{n}{i}"), day) for n, day in enumerate(days) for i in range(2)])
    assert sorted(p.name for p in (path.parent / "cam.sent.days").iterdir()) == [
        "2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"]

    # The first day's file made unreadable as a file: lookups of the other days never touch it.
    first_file = path.parent / "cam.sent.days" / "2026-01-01"
    first_file.unlink()
    first_file.mkdir()
    ledger = Ledger(path)
    assert ledger.days_in_memory == []
    assert all(ledger.has(f"f{n}-{i}", d(f"{n}{i}"), days[n]) for n in range(1, 5) for i in range(2))
    assert ledger.days_in_memory == ["2026-01-03", "2026-01-04", "2026-01-05"] and DAYS_IN_MEMORY == 3
    assert not ledger.has("f4-0", d("other bytes"), days[4]) and not ledger.has("f4-0", d("40"), days[3])
    assert ledger.has("f1-1", d("11"), days[1])  # read again once dropped
    first_file.rmdir()

    # A kill in the middle of an append: the cut line is no frame; the lines before and after it are.
    with open(path.parent / "cam.sent.days" / "2026-01-05", "a") as handle:
        handle.write(f"f-cut {d('cut')[:40]}")
    again = Ledger(path)
    assert not again.has("f-cut", d("cut")[:40], days[4]) and again.has("f4-1", d("41"), days[4])
    again.add([("f-next", d("next"), days[4])])
    reread = Ledger(path)
    assert reread.has("f-next", d("next"), days[4]) and not reread.has("f-cut", d("cut")[:40], days[4])
    assert ("f-cut", d("cut")[:40]) not in reread.entries()

    # A ledger of one file, last written on 2026-01-03: its frames count up to that day only.
    path.write_text(f"old-1 {d('old')}\n")
    written = datetime(2026, 1, 3, 12, tzinfo=UTC).timestamp()
    os.utime(path, (written, written))
    legacy = Ledger(path)
    assert legacy.has("old-1", d("old"), days[1])
    assert legacy.has("old-1", d("old"), days[1] + timedelta(hours=1))
    assert not legacy.has("old-1", d("old"), days[4])
    assert ("old-1", d("old")) in legacy.entries() and ("f2-0", d("20")) in legacy.entries()
