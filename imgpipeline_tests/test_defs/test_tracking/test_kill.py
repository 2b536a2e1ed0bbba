"""A warehouse and tracking backfill SIGKILLed mid-work and run again ends exactly as an unbroken one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from imgpipeline.defs.tables import TRACKS, from_parquet
from imgpipeline.defs.tracking.assets import tracking_tables
from imgpipeline.defs.warehouse.assets import hourly_tables
from imgpipeline.defs.warehouse.builds import BUILDS
from imgpipeline.resources import StorageResource, TrackingResource
from imgpipeline_tests.instances import bare_home, fresh_instance
from imgpipeline_tests.pipeline import kill_when
from imgpipeline_tests.scenes import frames_of, landing_records, moving
from imgpipeline_tests.test_defs.test_tracking.test_tracking import ZONES, land

pytestmark = [pytest.mark.integration, pytest.mark.instance]

FIRST = datetime(2026, 11, 20, 0, tzinfo=UTC)
HOURS = 12
RANGE = ("2026-11-20-00:00", "2026-11-20-11:00")


def scenes() -> list[dict]:
    """Each hour: four people walking across the line from half a minute before the hour's end."""
    records, offset = [], 0
    for h in range(HOURS):
        things = [moving("person", 100 + 20 * k, 540, 5 * k, 5 * k + 40, y=100 + 60 * k) for k in range(4)]
        frames = frames_of(things, FIRST + timedelta(hours=h, minutes=59, seconds=30), 60, 5.0)
        frames = [(f"cam-{h:02d}-{n:04d}", when, seen) for n, (_, when, seen) in enumerate(frames)]
        for record in landing_records(frames):
            record.offset = offset = offset + 1
            records.append(record)
    return records


def tables(storage: StorageResource) -> dict[str, object]:
    """Every warehouse file: Parquet as tables, builds as the landing files and frames they read (their
    ids and the versions of the files are the store's own), the rest (what each hour was tracked from)
    as bytes."""
    store = storage.open()
    return {key: from_parquet(store.get(key)) if key.endswith(".parquet")
            else read_build(store, key) if key.startswith(BUILDS) else store.get(key)
            for key in sorted(store.list("warehouse/"))}


def read_build(store, key: str) -> bytes:
    written = json.loads(store.get(key))
    return json.dumps([sorted(written["landing"]), written["frames"]]).encode()


@pytest.mark.long(1)
def test_a_killed_backfill_run_again_equals_an_unbroken_one(tmp_path):
    zones_file = tmp_path / "zones.yaml"
    zones_file.write_text(ZONES % (320, 320))
    records = scenes()
    clean, broken = (StorageResource(uri=(tmp_path / name).as_uri()) for name in ("clean", "broken"))
    for storage in (clean, broken):
        land(storage.open(), records)

    resources = {"storage": clean, "tracking": TrackingResource(zones_file=str(zones_file))}
    tags = {"dagster/asset_partition_range_start": RANGE[0], "dagster/asset_partition_range_end": RANGE[1]}
    with fresh_instance() as instance:
        for assets in ([hourly_tables], [tracking_tables]):
            assert dg.materialize(assets, instance=instance, resources=resources, tags=tags).success

    env = {**os.environ, "IMGPIPELINE_STORAGE_URI": broken.uri, "IMGPIPELINE_ZONES_FILE": str(zones_file),
           "IMGPIPELINE_HOME": str(tmp_path), "DAGSTER_HOME": bare_home(tmp_path / "dagster")}
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "imgpipeline.definitions",
               "--select", "frames,detections,class_hours,tracks,object_counts",
               "--partition-range", "...".join(RANGE)]
    folder = broken.open().folder
    kill_when(command, env, folder / TRACKS.hour_key(FIRST + timedelta(hours=HOURS // 2)),
              folder / TRACKS.hour_key(FIRST + timedelta(hours=HOURS - 1)))

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    expected, got = tables(clean), tables(broken)
    assert list(got) == list(expected)  # no file missing, none extra (one zones file's counts per hour)
    for key, table in expected.items():
        assert got[key] == table if isinstance(table, bytes) else got[key].equals(table), key
    ids = {t for key, table in expected.items() if "/detections/" in key and key.endswith(".parquet")
           for t in table.column("track_id").to_pylist() if t is not None}
    assert len(ids) == 4 * HOURS  # four walkers an hour, each one id over the hour's end
