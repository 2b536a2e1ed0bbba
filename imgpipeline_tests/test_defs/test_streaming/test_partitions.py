"""Partitions as the unit of parallelism, under a real Dagster daemon (`dagster-daemon run`), its run
queue and forked runs: a frames topic of 4 partitions fed by 8 cameras, one partition with a backlog ten
times the others'. Runs of different partitions run side by side, never two of one partition (the queue's tag
limit, set to 1 here, while the sensor keeps 2 of a partition queued or running), every camera's frames
land in the order it captured them, and the quiet partitions are served while the busy one still has a
backlog."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import dagster as dg
import pytest
from kafka.partitioner.default import murmur2

from imgpipeline.defs.records.reader import Landing
from imgpipeline.defs.streaming.detect_frames import PARTITION_TAG
from imgpipeline.ingest.producer import FrameProducer, Ledger
from imgpipeline.lib.instance import open_instance
from imgpipeline.resources import KafkaResource, StorageResource
from imgpipeline.services import LocalServices
from imgpipeline_tests.pipeline import landing_records, stop_at_once, video_backlog, wait_for

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


def event_order(instance: dg.DagsterInstance, kind: dg.DagsterEventType) -> dict[str, int]:
    """Each run's `kind` event (its start, its success) by its place in the instance's one event log: an
    order that no clock gives, so that what ran side by side or first reads the same on a busy machine."""
    records = instance.fetch_run_status_changes(kind, limit=10_000, ascending=True).records
    return {record.event_log_entry.run_id: record.storage_id for record in records}


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
    local.up_daemon()
    try:
        landing = Landing(storage.open())
        wait_for(lambda: len(landing.records()) >= total, 400, "every frame to land", every_s=2)
        with open_instance(local.dagster.dagster_home) as instance:

            def finished() -> list[dg.DagsterRun] | None:
                runs = instance.get_runs(dg.RunsFilter(job_name="detect_frames"))
                return runs if runs and all(run.is_finished for run in runs) else None

            # The last run's status lands just after its files.
            all_runs = wait_for(finished, 120, "every run to finish", every_s=1)
            # The detect_frames runs' events (the hourly assets' runs start meanwhile too).
            detect_runs = {run.run_id for run in all_runs}
            started = {r: at for r, at in event_order(instance, dg.DagsterEventType.RUN_START).items()
                       if r in detect_runs}
            ended = {r: at for r, at in event_order(instance, dg.DagsterEventType.RUN_SUCCESS).items()
                     if r in detect_runs}
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

    runs = [run.run_id for run in all_runs if run.status == dg.DagsterRunStatus.SUCCESS]
    assert len(runs) == len(all_runs) and set(runs) == set(started) == set(ended)
    partition_of_run = {run.run_id: int(run.tags[PARTITION_TAG].rsplit("-", 1)[1]) for run in all_runs}
    # Side by side: each of two runs started before the other ended, in the event log's order.
    pairs = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]
             if started[a] < ended[b] and started[b] < ended[a]]
    same = [(a, b) for a, b in pairs if partition_of_run[a] == partition_of_run[b]]
    assert pairs, "no two runs ran side by side"
    assert same == [], "two runs of one partition ran at once, past the queue's limit"

    busy_runs = [run for run in runs if partition_of_run[run] == busy]
    quiet_runs = [run for run in runs if partition_of_run[run] != busy]
    assert len(busy_runs) >= 2 * BUSY // 50  # the busy partition's backlog took several runs
    assert {partition_of_run[run] for run in quiet_runs} == set(range(PARTITIONS)) - {busy}
    # Not starved: every quiet partition's last run ended before the busy one's last run started.
    assert max(ended[run] for run in quiet_runs) < max(started[run] for run in busy_runs)
