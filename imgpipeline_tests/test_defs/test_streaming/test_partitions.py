"""Partitions as the unit of parallelism, under a real daemon (`dagster dev`), its run queue and forked
runs: a frames topic of 4 partitions fed by 8 cameras, one partition with a backlog ten times the
others'. Runs of different partitions run side by side, never two of one partition (the queue's tag
limit, set to 1 here, while the sensor keeps 2 of a partition queued or running), every camera's frames
land in the order it captured them, and the quiet partitions are served while the busy one still has a
backlog."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import dagster as dg
import pytest
from kafka.partitioner.default import murmur2

from imgpipeline.defs.streaming.detect_frames import PARTITION_TAG
from imgpipeline.ingest.producer import FrameProducer, Ledger
from imgpipeline.lib.instance import open_instance
from imgpipeline.resources import KafkaResource, StorageResource
from imgpipeline.services import LocalServices
from imgpipeline_tests.pipeline import landing_records, stop_at_once, video_backlog

pytestmark = [pytest.mark.integration, pytest.mark.instance]
PARTITIONS = 4
BUSY, QUIET = 150, 15  # frames per camera
PROJECT_YAML = Path(__file__).resolve().parents[3] / "dagster.yaml"


def partition_of(source: str) -> int:
    """The partition Kafka's default partitioner gives the key `source`, as the producer keys frames."""
    return (murmur2(source.encode()) & 0x7FFFFFFF) % PARTITIONS


def cameras() -> dict[str, int]:
    """Two cameras per partition: `cam-N` names picked by the partitioner."""
    chosen: dict[str, int] = {}
    n = 0
    while len(chosen) < 2 * PARTITIONS:
        name = f"cam-{n}"
        if sum(1 for p in chosen.values() if p == partition_of(name)) < 2:
            chosen[name] = partition_of(name)
        n += 1
    return chosen


def overlap(a: dg.RunRecord, b: dg.RunRecord) -> bool:
    return a.start_time < b.end_time and b.start_time < a.end_time


@pytest.mark.long(1.5)
def test_runs_of_partitions_go_side_by_side_fairly_and_in_order(services, tmp_path, monkeypatch):
    kafka = KafkaResource(bootstrap_servers=services.kafka.address(services.kafka.ports),
                          frames_topic=f"frames-fair-{tmp_path.name[-8:]}")
    kafka.ensure_topics(partitions=PARTITIONS)
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    # The project's instance settings, one run per partition at once (the queue's tag limit).
    text, limit = PROJECT_YAML.read_text(), "applyLimitPerUniqueValue: true\n        limit: "
    assert limit + "2" in text
    (tmp_path / "dagster.yaml").write_text(text.replace(limit + "2", limit + "1"))
    for name, value in {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                        "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic,
                        "IMGPIPELINE_STORAGE_URI": storage.uri,
                        # runs of 50 whatever the backlog: the busy partition's takes several
                        "IMGPIPELINE_MAX_BATCH": "50", "IMGPIPELINE_MAX_BACKLOG_BATCH": "50",
                        "IMGPIPELINE_MAX_WAIT_S": "0",
                        "IMGPIPELINE_RUNS_PER_PARTITION": "2", "IMGPIPELINE_SENSOR_INTERVAL_S": "1",
                        "IMGPIPELINE_HOME": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)

    chosen = cameras()
    busy = min(chosen.values())  # the partition the sensor plans first
    sent: dict[str, list[str]] = {}
    for source, partition in chosen.items():  # the whole backlog is there before the daemon starts
        frames = video_backlog(BUSY if partition == busy else QUIET, source)
        FrameProducer(kafka, storage, source, ledger=Ledger(tmp_path / f"{source}.sent")).send_all(
            frames, progress=False)
        sent[source] = [f.frame_id for f in frames]
    total = sum(len(ids) for ids in sent.values())

    local = LocalServices(tmp_path / ".imgpipeline")
    local.up_ui()
    run_records: list[dg.RunRecord] = []
    try:
        deadline = time.monotonic() + 400
        while len(landing_records(storage)) < total and time.monotonic() < deadline:
            time.sleep(2)
        with open_instance(local.dagster.dagster_home) as instance:
            while time.monotonic() < deadline:  # the last run's status lands just after its files
                run_records = instance.get_run_records(dg.RunsFilter(job_name="detect_frames"))
                if run_records and all(r.dagster_run.is_finished for r in run_records):
                    break
                time.sleep(1)
    finally:
        stop_at_once(local.dagster)

    landed = landing_records(storage)
    assert sorted(r.frame_id for r in landed) == sorted(i for ids in sent.values() for i in ids)
    assert {r.status for r in landed} == {"detected"}

    # Each camera's frames: all on its partition, in the order it captured them.
    by_source = defaultdict(list)
    for record in landed:
        by_source[record.source_id].append(record)
    for source, mine in by_source.items():
        in_order = sorted(mine, key=lambda r: r.offset)
        assert {r.partition for r in mine} == {chosen[source]}, source
        assert [r.frame_id for r in in_order] == sent[source], source
        assert [r.captured_at for r in in_order] == sorted(r.captured_at for r in mine), source

    runs = [r for r in run_records if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS]
    assert len(runs) == len(run_records)
    partition_of_run = {r.dagster_run.run_id: int(r.dagster_run.tags[PARTITION_TAG].rsplit("-", 1)[1])
                        for r in runs}
    pairs = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:] if overlap(a, b)]
    same = [(a, b) for a, b in pairs
            if partition_of_run[a.dagster_run.run_id] == partition_of_run[b.dagster_run.run_id]]
    assert pairs, "no two runs ran side by side"
    assert same == [], "two runs of one partition ran at once, past the queue's limit"

    busy_runs = [r for r in runs if partition_of_run[r.dagster_run.run_id] == busy]
    quiet_runs = [r for r in runs if partition_of_run[r.dagster_run.run_id] != busy]
    assert len(busy_runs) >= 2 * BUSY // 50  # the busy partition's backlog took several runs
    assert {partition_of_run[r.dagster_run.run_id] for r in quiet_runs} == set(range(PARTITIONS)) - {busy}
    # Not starved: every quiet partition was done before the busy one's last run began.
    assert max(r.end_time for r in quiet_runs) <= max(r.start_time for r in busy_runs)
