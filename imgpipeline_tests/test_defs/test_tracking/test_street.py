"""The street video end to end through the daemon: detected by the fast lane's run, the warehouse and
tracking tables from their automation sensors; then counted again by hand to the same result."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import dagster as dg
import pytest

from imgpipeline.cli.samples import sample
from imgpipeline.defs.tables import OBJECT_COUNTS, TABLES, from_parquet
from imgpipeline.defs.tables.views import connect
from imgpipeline.defs.tracking.assets import tracking_tables
from imgpipeline.defs.warehouse import tracked
from imgpipeline.defs.warehouse.assets import hourly_tables
from imgpipeline.ingest.producer import FrameProducer, Ledger
from imgpipeline.ingest.sources import video_frames
from imgpipeline.lib.instance import open_instance
from imgpipeline.paths import PACKAGE_DIR
from imgpipeline.resources import StorageResource, TrackingResource
from imgpipeline.services import LocalServices
from imgpipeline_tests.conftest import product_lane
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import stop_at_once, wait_for

# What the daemon makes of the street video (results): it runs on SQLite, the default instance.
pytestmark = [pytest.mark.integration, pytest.mark.instance, pytest.mark.results]

START = datetime(2026, 11, 20, 10, 59, 55, tzinfo=UTC)  # the 10 s video runs over 11:00
HOURS = [datetime(2026, 11, 20, 10, tzinfo=UTC), datetime(2026, 11, 20, 11, tzinfo=UTC)]
HOURLY = ("frames", "detections", "tracks")


def settled(storage: StorageResource, frames: int):
    """True once every frame is in the hourly tables and both hours were counted after the last
    detections were written."""
    folder = storage.open().folder
    files = {t: [folder / TABLES[t].hour_key(h) for h in HOURS] for t in HOURLY}
    counts = [p for h in HOURS
              for p in (folder / OBJECT_COUNTS.hour_key(h)).parent.glob("zones-*.parquet")]
    if not all(p.exists() for ps in files.values() for p in ps) or len(counts) < 2:
        return False
    if sum(from_parquet(p.read_bytes()).num_rows for p in files["frames"]) != frames:
        return False
    return min(p.stat().st_mtime for p in counts) > max(p.stat().st_mtime for p in files["detections"])


def idle(storage: StorageResource, dagster_home) -> bool:
    """True while nothing is left to make: no hour marked to be tracked again, no backfill waiting for
    its runs, no run queued or under way but the fast lane's, which follows the topic for good."""
    from dagster._core.execution.backfill import BulkActionStatus

    if storage.open().list(f"{tracked.RETRACK}/"):
        return False
    with open_instance(dagster_home) as instance:
        return not instance.get_backfills(status=BulkActionStatus.REQUESTED) and not [
            run for run in instance.get_runs(filters=dg.RunsFilter(statuses=[
                dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED])) if run.job_name != "follow_frames"]


class Held:
    """Whether a condition has held on every look for `seconds` (the automation sensors look every 5 s
    here: a run just done may still ask for one more on their next look)."""

    def __init__(self, seconds: float):
        self.seconds, self.since = seconds, None

    def __call__(self, holds: bool) -> bool:
        if not holds:
            self.since = None
            return False
        self.since = self.since or time.monotonic()
        return time.monotonic() - self.since >= self.seconds


def runs_seen(dagster_home) -> str:
    """The instance's runs, oldest first: job, status, hours and what asked for them."""
    with open_instance(dagster_home) as instance:
        runs = instance.get_runs()
    return "runs: " + "; ".join(
        f"{r.job_name} {r.status.value} {r.tags.get('dagster/asset_partition_range_start', '')}.."
        f"{r.tags.get('dagster/asset_partition_range_end', r.tags.get('dagster/partition', ''))} "
        f"{r.tags.get('dagster/sensor_name', r.tags.get('dagster/automation_condition', ''))}"
        for r in reversed(runs))


def snapshot(storage: StorageResource) -> dict:
    store = storage.open()
    found = {(t, h): from_parquet(store.get(TABLES[t].hour_key(h))) for t in HOURLY for h in HOURS}
    for h in HOURS:
        for key in store.list(f"warehouse/object_counts/{h:dt=%Y-%m-%d/hour=%H}/"):
            found["object_counts", h] = from_parquet(store.get(key))
    return found


@pytest.mark.long(3)
def test_street_video_unique_objects_through_the_daemon(kafka, tmp_path, monkeypatch):
    """Through the daemon as a person runs it: the fast lane detects the frames as they come."""
    product_lane(monkeypatch)
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    zones_file = str(PACKAGE_DIR.parent / "zones.yaml")
    for name, value in {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                        "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic,
                        "IMGPIPELINE_STORAGE_URI": storage.uri,
                        "IMGPIPELINE_SENSOR_INTERVAL_S": "1", "IMGPIPELINE_AUTOMATION_INTERVAL_S": "5",
                        "IMGPIPELINE_HOME": str(tmp_path),
                        "IMGPIPELINE_ZONES_FILE": zones_file}.items():
        monkeypatch.setenv(name, value)
    local = LocalServices(tmp_path / ".imgpipeline")
    assert local.up_daemon()["address"] is None  # the daemon alone: no UI
    try:
        frames = list(video_frames(str(sample("bikes.mp4")), "street-cam", start=START))
        FrameProducer(kafka, storage, "street-cam", ledger=Ledger(tmp_path / "sent")).send_all(
            iter(frames), progress=False)
        home, held = local.dagster.dagster_home, Held(12)
        wait_for(lambda: held(settled(storage, len(frames)) and idle(storage, home)), 480,
                 "detection, then the automation sensors' warehouse and tracking runs, then nothing to do",
                 explain=lambda: runs_seen(home), every_s=1)
    finally:
        stop_at_once(local.dagster)

    con = connect(storage)
    per_class = {c: (n, u) for c, n, u in con.sql(
        "SELECT class_name, count(*), count(DISTINCT track_id) FROM detections GROUP BY 1").fetchall()}
    car_detections, unique_cars = per_class["car"]
    assert car_detections >= 100 and 1 <= unique_cars <= car_detections / 10
    # The cyclist: one bicycle track over a run of consecutive frames, no second bicycle id beside it.
    bicycle = con.sql("SELECT track_id, list(CAST(split_part(frame_id, '-', 3) AS INTEGER) "
                      "ORDER BY frame_id) "
                      "FROM detections WHERE class_name = 'bicycle' AND track_id IS NOT NULL GROUP BY 1 "
                      "ORDER BY count(*) DESC").fetchall()
    track, numbers = bicycle[0]
    # Of the frames in its span where the detector saw a bicycle at all, the track holds nearly every one
    # (how many frames the detector sees it in, behind the railing, depends on the CPU's precision).
    seen = {n for (n,) in con.sql(
        "SELECT DISTINCT CAST(split_part(frame_id, '-', 3) AS INTEGER) FROM detections "
        "WHERE class_name = 'bicycle'").fetchall() if numbers[0] <= n <= numbers[-1]}
    assert len(numbers) >= 15 and len(set(numbers)) >= 0.9 * len(seen)
    assert all(not set(range(min(n), max(n) + 1)) & set(numbers) for _, n in bicycle[1:])
    # A person walking over 11:00 keeps one id in both hours' tracks.
    spanning = con.sql("SELECT track_id FROM tracks WHERE class_name = 'person' GROUP BY 1 "
                       "HAVING count(DISTINCT hour_start) = 2").fetchall()
    assert spanning
    checks = con.sql("SELECT sum(frames) FROM tracks").fetchone()[0] == con.sql(
        "SELECT count(track_id) FROM detections").fetchone()[0]
    assert checks

    before = snapshot(storage)
    resources = {"storage": storage, "tracking": TrackingResource(zones_file=zones_file)}
    tags = {"dagster/asset_partition_range_start": "2026-11-20-10:00",
            "dagster/asset_partition_range_end": "2026-11-20-11:00"}
    with fresh_instance() as instance:
        for assets in ([hourly_tables], [tracking_tables]):
            assert dg.materialize(assets, instance=instance, resources=resources, tags=tags).success
    after = snapshot(storage)
    assert before.keys() == after.keys() and len(before) == 8
    for key, table in before.items():
        assert after[key].equals(table), key
