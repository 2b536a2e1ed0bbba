"""No string from outside becomes SQL: objects under `warehouse/` whose keys carry quotes, a statement's
end, a planted `COPY … TO …`, a glob and newlines are refused and reported, never read and never run;
the views and the daily summary build from the files of the layout alone."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import pytest

from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.defs.tables import (
    DAILY_SUMMARY,
    DETECTIONS,
    FRAMES,
    OBJECT_COUNTS,
    TABLES,
    counts_part,
    from_parquet,
    to_parquet,
)
from imgpipeline.defs.warehouse import rows as warehouse_rows
from imgpipeline.resources import StorageResource
from imgpipeline_tests.conftest import ON_EVERY_BACKEND
from imgpipeline_tests.instances import fresh_instance

DAY = date(2026, 11, 21)
HOUR = datetime(2026, 11, 21, 10, tzinfo=UTC)
FOLDER = "dt=2026-11-21/hour=10/"


def records(n: int = 3) -> list[LandingRecord]:
    return [
        LandingRecord(schema=1, frame_id=f"f{i}", source_id="cam1", captured_at=f"2026-11-21T10:00:0{i}.000Z",
                      processed_at="2026-11-21T10:01:00.000Z", topic="t", partition=0, offset=i,
                      status="detected", object_count=1, width=640, height=480, bytes=1000 + i,
                      brightness=100.0, detections=[{"class_id": 0, "class_name": "person", "confidence": 0.5,
                                                     "box": [1, 2, 3, 4]}])
        for i in range(n)
    ]


def write_hour(storage) -> dict[str, bytes]:
    """One genuine hour of frames and detections; the Parquet bytes of each table."""
    latest = warehouse_rows.latest_per_frame(records())
    data = {"frames": to_parquet(warehouse_rows.frames_table(latest)),
            "detections": to_parquet(warehouse_rows.detections_table(latest))}
    for table, parquet in data.items():
        storage.open().put(TABLES[table].hour_key(HOUR), parquet)
    return data


def hostile_keys(table: str, target: Path, line_break: str = "\n") -> list[str]:
    """Keys beside the genuine file, each holding a valid copy of it (read, it would count twice).
    Spliced into SQL after the genuine file's path, the third closes the file list and the call, then
    runs a COPY that writes `target`; keys that would break the SQL before it sort after it."""
    folder = f"warehouse/{table}/{FOLDER}"
    return [
        folder + "*.parquet",
        folder + f"line{line_break}break.parquet",
        folder + f"part-0.parquet']); COPY (SELECT 'planted' AS x) TO '{target}'; --.parquet",
        folder + "quote's.parquet",
        folder + "quotes\"'.parquet",
    ]


def plant(storage, table: str, parquet: bytes, target: Path) -> list[str]:
    # The S3 endpoint (moto) answers 404 to a key with a line feed; a carriage return it stores.
    keys = hostile_keys(table, target, "\r" if storage.endpoint_url else "\n")
    for key in keys:
        storage.open().put(key, parquet)
    assert set(keys) <= set(storage.open().list(f"warehouse/{table}/"))
    return keys


def test_only_keys_of_the_layout_are_table_keys():
    assert FRAMES.is_key(FRAMES.hour_key(HOUR))
    assert DAILY_SUMMARY.is_key(DAILY_SUMMARY.day_key(DAY))
    assert OBJECT_COUNTS.is_key(OBJECT_COUNTS.hour_key(HOUR, counts_part("ab12" * 16)))
    assert OBJECT_COUNTS.is_key(OBJECT_COUNTS.hour_key(HOUR, counts_part(None)))
    genuine = FRAMES.hour_key(HOUR)
    for key in [*hostile_keys("frames", Path("/tmp/x")), genuine + "\n", genuine.replace("10", "1０"),
                DETECTIONS.hour_key(HOUR), FRAMES.day_key(DAY),
                genuine.replace("part-0", "part-1"), "warehouse/frames/" + genuine]:
        assert not FRAMES.is_key(key), key


@pytest.mark.integration
@ON_EVERY_BACKEND
def test_views_and_query_run_nothing_a_key_says(storage, tmp_path, capsys, monkeypatch):
    from imgpipeline.cli.main import main
    from imgpipeline.defs.tables.views import connect

    data = write_hour(storage)
    target = tmp_path / "planted.csv"
    keys = plant(storage, "frames", data["frames"], target)

    con = connect(storage)
    assert not target.exists(), "a storage key ran as SQL"
    assert con.sql("SELECT count(*), count(DISTINCT frame_id) FROM frames").fetchone() == (3, 3)
    assert con.sql("SELECT count(*) FROM detections").fetchone() == (3,)
    reported = capsys.readouterr().err
    assert f"{len(keys)} objects under warehouse/ not read" in reported
    assert all(repr(key) in reported for key in keys) and "\n" not in reported.strip()

    # `imgpipeline query` over the same storage, as a person runs it.
    monkeypatch.setenv("IMGPIPELINE_STORAGE_URI", storage.uri)
    if storage.endpoint_url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", storage.endpoint_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", storage.access_key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", storage.secret_access_key)
    assert main(["query", "--csv", "SELECT count(*) AS n FROM frames"]) == 0
    shown = capsys.readouterr()
    assert shown.out.split() == ["n", "3"]
    assert all(repr(key) in shown.err for key in keys)
    assert not target.exists()


@pytest.mark.integration
@pytest.mark.instance
@pytest.mark.edge
@ON_EVERY_BACKEND
def test_daily_summary_runs_nothing_a_key_says(storage, tmp_path):
    from dagster_duckdb import DuckDBResource

    from imgpipeline.defs.warehouse.assets import daily_summary

    data = write_hour(storage)
    target = tmp_path / "planted.csv"
    keys = [key for table in ("frames", "detections") for key in plant(storage, table, data[table], target)]
    with fresh_instance() as instance:
        result = dg.materialize([daily_summary], partition_key=DAY.isoformat(), instance=instance,
                                resources={"storage": storage, "duckdb": DuckDBResource(database=":memory:")},
                                raise_on_error=False)
        warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert not target.exists(), "a storage key ran as SQL"
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert checks and all(check.passed for check in checks)
    (materialization,) = result.asset_materializations_for_node("daily_summary")
    assert materialization.metadata["refused_keys"].value == len(keys)
    summary = from_parquet(storage.open().get(DAILY_SUMMARY.day_key(DAY))).to_pylist()
    assert [(r["source_id"], r["class_name"], r["frames"], r["objects"]) for r in summary] == [
        ("cam1", "person", 3, 3)]
    assert any(all(repr(key) in message for key in keys) for message in warnings), warnings


def test_a_storage_folder_with_quotes_in_its_name(tmp_path, capsys):
    from imgpipeline.defs.tables import views
    from imgpipeline.defs.warehouse import sql

    storage = StorageResource(uri=str(tmp_path / "o'neil's \"store\"; DROP TABLE x"))
    write_hour(storage)
    con = views.connect(storage)
    assert con.sql("SELECT count(*) FROM frames").fetchone() == (3,)
    files = {t: views.table_files(storage, t, f"dt={DAY}/").paths for t in ("frames", "detections")}
    summary = sql.query_daily_summary(con, DAY, files["frames"], files["detections"]).fetchall()
    assert len(summary) == 1
    assert capsys.readouterr().err == ""
