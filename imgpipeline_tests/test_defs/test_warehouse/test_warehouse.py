"""The batch path on the real broker and storage: landing → hourly Parquet → DuckDB summary."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, date, datetime

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from imgpipeline.cli.samples import sample
from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.defs.tables import FRAMES, from_parquet, to_parquet
from imgpipeline.defs.tables.checks import schema_problems
from imgpipeline.defs.warehouse import checks
from imgpipeline.defs.warehouse import rows as warehouse_rows
from imgpipeline.ingest.messages import FrameMessage
from imgpipeline.ingest.producer import Frame, FrameProducer, Ledger
from imgpipeline.ingest.sources import video_frames
from imgpipeline.resources import TrackingResource
from imgpipeline.vision.quality import decode_image, encode_jpeg
from imgpipeline_tests.conftest import ON_EVERY_BACKEND
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import drain, landing_records

pytestmark = [pytest.mark.instance, pytest.mark.results]

START = datetime(2026, 11, 20, 23, 59, 57, tzinfo=UTC)


def storage_env(storage, kafka) -> dict:
    env = {**os.environ, "IMGPIPELINE_STORAGE_URI": storage.uri,
           "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic}
    if storage.endpoint_url:
        env.update(AWS_ENDPOINT_URL=storage.endpoint_url, AWS_ACCESS_KEY_ID=storage.access_key_id,
                   AWS_SECRET_ACCESS_KEY=storage.secret_access_key)
    return env


def cli(env, *args, module="imgpipeline.cli") -> str:
    result = subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def expected_from_landing(records: list[dict]) -> pd.DataFrame:
    """An independent summary: pandas over the raw landing records, latest record per frame."""
    frames = pd.DataFrame(records).sort_values("processed_at").drop_duplicates("frame_id", keep="last")
    frames["day"] = pd.to_datetime(frames["captured_at"]).dt.strftime("%Y-%m-%d")
    rows = []
    for (day, source), group in frames.groupby(["day", "source_id"]):
        dets = [(d["class_name"], d["confidence"]) for ds in group["detections"] for d in ds]
        per_class = pd.DataFrame(dets, columns=["class_name", "confidence"])
        dark = float((group["status"] == "skipped_dark").mean())
        error = float((group["status"] == "error").mean())
        if per_class.empty:
            rows.append((day, source, None, len(group), 0, None, dark, error))
        for name, c in per_class.groupby("class_name"):
            rows.append((day, source, name, len(group), len(c), c["confidence"].max(), dark, error))
    columns = ["day", "source_id", "class_name", "frames", "objects", "max_confidence", "dark_share",
               "error_share"]
    return pd.DataFrame(rows, columns=columns).sort_values(
        ["day", "source_id", "class_name"], na_position="first").reset_index(drop=True)


@pytest.mark.integration
@pytest.mark.long(0.4)
@ON_EVERY_BACKEND
def test_two_days_backfilled_and_queried(kafka, storage, tmp_path):
    # Frames across midnight: the street video, a dark frame and a corrupt message.
    frames = list(video_frames(str(sample("bikes.mp4")), "bikes", start=START, max_frames=120))
    dark = (decode_image(sample("zidane.jpg").read_bytes()) * 0.05).astype(np.uint8)
    night = datetime(2026, 11, 21, 3, 5, tzinfo=UTC)
    frames.append(Frame("night-1", encode_jpeg(dark), night, 1280, 720))
    producer = FrameProducer(kafka, storage, "bikes", ledger=Ledger(tmp_path / "ledger"))
    producer.send_all(frames, progress=False)
    sender = kafka.producer()
    missing = FrameMessage("gone-1", "broken", "2026-11-21T05:00:00.000Z",
                           storage.open().uri("frames/broken/2026-11-21/gone-1.jpg"), None, None, None)
    sender.send(kafka.frames_topic, key=b"broken", value=missing.to_json())
    sender.flush()
    sender.close()
    with fresh_instance() as instance:
        drain(kafka, storage, instance)
    records = landing_records(storage)
    assert len(records) == 122

    env = storage_env(storage, kafka)
    # A real single-run backfill of both days, from the CLI, as docs/warehouse.md shows it.
    cli(env, "asset", "materialize", "-m", "imgpipeline.definitions",
        "--select", "frames,detections,class_hours", "--partition-range",
        "2026-11-20-22:00...2026-11-21-23:00", module="dagster")
    cli(env, "asset", "materialize", "-m", "imgpipeline.definitions", "--select", "daily_summary",
        "--partition-range", "2026-11-20...2026-11-21", module="dagster")

    store = storage.open()
    assert store.exists("warehouse/frames/dt=2026-11-20/hour=22/part-0.parquet")  # empty hour
    empty_hour = store.get("warehouse/frames/dt=2026-11-20/hour=22/part-0.parquet")
    assert from_parquet(empty_hour).num_rows == 0

    query = "SELECT {} FROM daily_summary ORDER BY day, source_id, class_name NULLS FIRST"
    got = pd.read_csv(pd.io.common.StringIO(cli(env, "query", "--csv", query.format(
        "strftime(day, '%Y-%m-%d') AS day, source_id, class_name, frames, objects, max_confidence, "
        "dark_share, error_share"))))
    expected = expected_from_landing(records)
    for frame in (got, expected):  # a source without detections has one row with no class
        frame["class_name"] = frame["class_name"].astype(object).fillna("(none)")
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, atol=1e-9)
    assert set(got["day"]) == {"2026-11-20", "2026-11-21"}
    assert float(got[got.source_id == "bikes"]["dark_share"].max()) > 0
    assert float(got[got.source_id == "broken"]["error_share"].max()) == 1.0

    counts = cli(env, "query", "--csv", "SELECT count(*) AS n, count(DISTINCT frame_id) AS d FROM frames")
    assert counts.splitlines()[1] == "122,122"
    summary = cli(env, "summary", "--date", "2026-11-21")
    assert "bikes" in summary and "person" in summary


@pytest.mark.integration
def test_rematerializing_gives_the_same_rows_in_the_same_order(kafka, storage, tmp_path):
    from dagster_duckdb import DuckDBResource

    from imgpipeline.defs.warehouse.assets import daily_summary, hourly_tables

    frames = list(video_frames(str(sample("bikes.mp4")), "bikes", start=START, max_frames=60))
    producer = FrameProducer(kafka, storage, "bikes", ledger=Ledger(tmp_path / "ledger"))
    producer.send_all(frames, progress=False)
    resources = {"storage": storage, "duckdb": DuckDBResource(database=":memory:"),
                 "tracking": TrackingResource()}
    with fresh_instance() as instance:
        drain(kafka, storage, instance)

        def run(asset, partition):
            result = dg.materialize([asset], partition_key=partition, instance=instance,
                                    resources=resources)
            assert result.success
            checks = result.get_asset_check_evaluations()
            assert checks and all(c.passed for c in checks)
            return result

        store = storage.open()
        run(hourly_tables, "2026-11-20-23:00")
        first = store.get("warehouse/detections/dt=2026-11-20/hour=23/part-0.parquet")
        run(daily_summary, "2026-11-20")
        summary = store.get("warehouse/daily_summary/dt=2026-11-20/part-0.parquet")
        run(hourly_tables, "2026-11-20-23:00")
        run(daily_summary, "2026-11-20")
        again = store.get("warehouse/detections/dt=2026-11-20/hour=23/part-0.parquet")
        assert from_parquet(again).equals(from_parquet(first))
        assert from_parquet(store.get("warehouse/daily_summary/dt=2026-11-20/part-0.parquet")).equals(
            from_parquet(summary))
        assert from_parquet(first).num_rows > 0


IDENTITY = {"model": "yolov4-tiny-416", "model_sha256": "ab" * 32, "engine": "openvino", "precision": "bf16"}


def test_checks_fail_on_a_duplicate_or_a_missing_frame():
    records = [
        LandingRecord(schema=1, frame_id=f"f{i}", source_id="s", captured_at=f"2026-11-21T10:00:0{i}.000Z",
                      processed_at="2026-11-21T10:01:00.000Z", topic="t", partition=0, offset=i,
                      status="detected", object_count=1, **IDENTITY,
                      detections=[{"class_id": 0, "class_name": "person", "confidence": 0.5,
                                   "box": [1, 2, 3, 4]}])
        for i in range(3)
    ]
    table = warehouse_rows.frames_table(warehouse_rows.latest_per_frame(records))
    assert checks.duplicate_frames(table) == []
    assert checks.landing_mismatch(table, records)["missing"] == []
    assert schema_problems(table, FRAMES.schema) == []

    duplicated = pa.concat_tables([table, table.slice(1, 1)])
    assert checks.duplicate_frames(duplicated) == ["s/f1"]
    missing = table.slice(0, 2)
    assert checks.landing_mismatch(missing, records)["missing"] == ["s/f2"]
    without_status = table.drop_columns(["status"])
    assert schema_problems(without_status, FRAMES.schema) == ["missing column status"]

    detections = warehouse_rows.detections_table(records)
    summary = pa.Table.from_pylist([{"source_id": "s", **IDENTITY, "frames": 3, "objects": 3}])
    assert checks.summary_mismatch(summary, table, detections.num_rows) == []
    assert checks.summary_mismatch(summary, missing, 2) != []
    # The same frames counted under another engine are not this summary's.
    other = pa.Table.from_pylist(
        [{"source_id": "s", **IDENTITY, "engine": "opencv", "frames": 3, "objects": 3}])
    assert checks.summary_mismatch(other, table, detections.num_rows) != []


def test_daily_summary_keeps_each_detector_identity_apart(tmp_path):
    import duckdb

    from imgpipeline.defs.warehouse.sql import query_daily_summary

    records = [
        LandingRecord(schema=1, frame_id=f"f{i}", source_id="s", captured_at=f"2026-11-21T10:00:0{i}.000Z",
                      processed_at="2026-11-21T10:01:00.000Z", topic="t", partition=0, offset=i,
                      status="detected", object_count=1 + i % 2,
                      **IDENTITY | ({"engine": "opencv", "precision": "f32"} if i % 2 else {}),
                      detections=[{"class_id": 0, "class_name": "person", "confidence": 0.5,
                                   "box": [1, 2, 3, 4]}] * (1 + i % 2))
        for i in range(6)
    ]
    frames, detections = tmp_path / "frames.parquet", tmp_path / "detections.parquet"
    frames.write_bytes(to_parquet(warehouse_rows.frames_table(records)))
    detections.write_bytes(to_parquet(warehouse_rows.detections_table(records)))
    engines = warehouse_rows.detections_table(records).column("engine").to_pylist()
    assert set(engines) == {"openvino", "opencv"}
    result = query_daily_summary(duckdb.connect(), date(2026, 11, 21), [str(frames)], [str(detections)])
    names = [c[0] for c in result.description]
    rows = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    assert names[:7] == ["day", "source_id", "model", "model_sha256", "engine", "precision", "class_name"]
    assert {(r["engine"], r["precision"]): (r["frames"], r["objects"]) for r in rows} == {
        ("openvino", "bf16"): (3, 3), ("opencv", "f32"): (3, 6)}


def test_latest_processing_wins():
    old = LandingRecord(schema=1, frame_id="a", source_id="s", processed_at="2026-11-21T10:00:00.000Z",
                        captured_at="x", topic="t", partition=0, offset=1, status="error")
    new = replace(old, processed_at="2026-11-21T11:00:00.000Z", offset=9, status="detected")
    assert warehouse_rows.latest_per_frame([new, old]) == [new]
    # A later error (a run that raced the successful one) never replaces a success.
    later_error = replace(old, processed_at="2026-11-21T12:00:00.000Z", offset=3)
    assert warehouse_rows.latest_per_frame([later_error, new, old]) == [new]


def test_the_s3_secret_never_appears_in_sql_text():
    """Whatever call runs it (execute, sql, query, executemany), DuckDB's own query log keeps each
    statement's text: the keys must be in none of them, only in the secret made from the parameters."""
    import duckdb

    from imgpipeline.defs.tables.views import prepare_connection
    from imgpipeline.resources import StorageResource

    storage = StorageResource(uri="s3://bucket/prefix", endpoint_url="http://127.0.0.1:9",
                              access_key_id="key-id-1", secret_access_key="top-secret-value")
    con = duckdb.connect()
    con.execute("CALL enable_logging('QueryLog')")
    prepare_connection(con, storage)
    statements = [sql for (sql,) in con.execute(
        "SELECT message FROM duckdb_logs WHERE type = 'QueryLog' AND message NOT LIKE 'CALL enable_logging%'"
    ).fetchall()]
    assert any("CREATE OR REPLACE SECRET" in sql for sql in statements), statements
    assert not [sql for sql in statements if "top-secret-value" in sql or "key-id-1" in sql]
    (secret,) = con.execute("SELECT secret_string FROM duckdb_secrets()").fetchone()
    assert "key_id=key-id-1" in secret and "endpoint=127.0.0.1:9" in secret and "top-secret" not in secret


def test_daily_summary_frame_figures_are_those_of_the_frames(tmp_path):
    """The commonest size (a tall frame's too; frames of unknown size left out) and the brightness
    quantiles, as pandas computes them from the same frames."""
    import duckdb

    from imgpipeline.defs.warehouse.sql import query_daily_summary

    sizes = [(1, 1_000_000)] * 3 + [(640, 360)] * 2 + [(None, None)] * 4
    records = [
        LandingRecord(schema=1, frame_id=f"f{i}", source_id="s", captured_at=f"2026-11-21T10:00:0{i}.000Z",
                      processed_at="2026-11-21T10:01:00.000Z", topic="t", partition=0, offset=i,
                      status="detected" if width else "error", width=width, height=height,
                      brightness=float(i * 11 % 7 * 30), object_count=0, **IDENTITY, detections=[])
        for i, (width, height) in enumerate(sizes)
    ]
    frames, detections = tmp_path / "frames.parquet", tmp_path / "detections.parquet"
    frames.write_bytes(to_parquet(warehouse_rows.frames_table(records)))
    detections.write_bytes(to_parquet(warehouse_rows.detections_table(records)))
    result = query_daily_summary(duckdb.connect(), date(2026, 11, 21), [str(frames)], [str(detections)])
    names = [c[0] for c in result.description]
    (row,) = [dict(zip(names, values, strict=True)) for values in result.fetchall()]
    brightness = pd.Series([r.brightness for r in records])
    assert row["typical_size"] == "1x1000000" and row["frames"] == len(records)
    assert [row["p10_brightness"], row["p50_brightness"], row["p90_brightness"]] == pytest.approx(
        brightness.quantile([0.1, 0.5, 0.9]).tolist())
    assert row["error_share"] == pytest.approx(4 / 9)


@pytest.mark.integration
@ON_EVERY_BACKEND
def test_the_daily_summary_sums_class_hours_only_where_they_are_of_the_stored_detections(
        kafka, storage, tmp_path):
    """Each hour's class_hours is made with its detections and stamped with their build; the summary sums
    it instead of the detections, reads the detections of an hour whose class_hours is missing, damaged,
    of another build or made by another version of the code, and gives the same numbers either way (the
    mean confidence to the last bit or so). One that lies under the right stamp is caught by the
    summary's check against the hourly tables."""
    from dagster_duckdb import DuckDBResource

    from imgpipeline.defs.tables import CLASS_HOURS, DETECTIONS
    from imgpipeline.defs.warehouse import builds
    from imgpipeline.defs.warehouse.assets import daily_summary, hourly_tables

    frames = list(video_frames(str(sample("bikes.mp4")), "bikes", start=START, max_frames=40))
    producer = FrameProducer(kafka, storage, "bikes", ledger=Ledger(tmp_path / "ledger"))
    producer.send_all(frames, progress=False)
    resources = {"storage": storage, "duckdb": DuckDBResource(database=":memory:"),
                 "tracking": TrackingResource()}
    hour, day = datetime(2026, 11, 20, 23, tzinfo=UTC), "2026-11-20"
    store = storage.open()
    with fresh_instance() as instance:
        drain(kafka, storage, instance)

        def summary() -> tuple[list[dict], dict[str, bool]]:
            result = dg.materialize([daily_summary], partition_key=day, instance=instance,
                                    resources=resources)
            checked = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
            (event,) = result.get_asset_materialization_events()
            read = event.materialization.metadata
            checked["summed"] = (read["hours_from_class_hours"].value, read["hours_from_detections"].value)
            rows = from_parquet(store.get(f"warehouse/daily_summary/dt={day}/part-0.parquet")).to_pylist()
            return rows, checked

        assert dg.materialize([hourly_tables], partition_key="2026-11-20-23:00", instance=instance,
                              resources=resources).success
        detections = DETECTIONS.read(store, DETECTIONS.hour_key(hour))
        made = CLASS_HOURS.read(store, CLASS_HOURS.hour_key(hour))
        assert builds.built_by(made) == builds.built_by(detections) is not None
        # What the rows must say, from the detections by pyarrow rather than by the SQL that made them.
        by_class = {}
        for row in detections.to_pylist():
            tally = by_class.setdefault(row["class_name"], {"objects": 0, "best": 0.0, "tracks": set()})
            tally["objects"] += 1
            tally["best"] = max(tally["best"], row["confidence"])
            tally["tracks"] |= {row["track_id"]} - {None}
        assert {r["class_name"]: (r["objects"], r["max_confidence"], sorted(r["track_ids"]))
                for r in made.to_pylist()} == {
            name: (t["objects"], t["best"], sorted(t["tracks"])) for name, t in by_class.items()}
        assert any(r["track_ids"] for r in made.to_pylist())

        from_made, checked = summary()
        assert checked.pop("summed") == (1, 0)  # the hour from its class_hours
        assert all(checked.values()) and sum(r["objects"] for r in from_made) == detections.num_rows

        def same(rows):
            assert len(rows) == len(from_made)
            for got, want in zip(rows, from_made, strict=True):
                assert got == {**want, "mean_confidence": pytest.approx(want["mean_confidence"])}

        key = CLASS_HOURS.hour_key(hour)
        lying = made.set_column(made.schema.get_field_index("objects"), "objects",
                                pa.array([n * 2 for n in made.column("objects").to_pylist()], pa.int64()))
        store.put(key, to_parquet(lying.replace_schema_metadata({b"imgpipeline.build": b"another"})))
        rows, checked = summary()  # of another build: the detections are read instead
        same(rows)
        assert checked.pop("summed") == (0, 1) and all(checked.values())
        older = {**made.schema.metadata, b"imgpipeline.class_hours": b"an older version"}
        store.put(key, to_parquet(lying.replace_schema_metadata(older)))
        rows, checked = summary()  # of this build, made by another version of the code: the same
        same(rows)
        store.put(key, b"PAR1 not a Parquet file")
        rows, checked = summary()  # damaged: the same, from the detections
        same(rows)
        assert checked.pop("summed") == (0, 1) and all(checked.values())
        store.delete(key)
        rows, checked = summary()  # missing: the same
        same(rows)
        store.put(key, to_parquet(lying.replace_schema_metadata(made.schema.metadata)))
        rows, checked = summary()  # a lie under the right stamp is read, and the check says so
        assert checked.pop("summed") == (1, 0)
        assert sum(r["objects"] for r in rows) == 2 * detections.num_rows
        assert checked["totals_match_hourly"] is False


def test_the_daily_summary_reads_files_written_before_the_identity_columns(tmp_path):
    """Hours landed before the detector identity was recorded have no such columns in their files: the
    summary reads them as NULL (one group of unknown identity), even on a day with no newer file."""
    import duckdb

    from imgpipeline.defs.warehouse.sql import query_daily_summary

    records = [
        LandingRecord(schema=1, frame_id=f"f{i}", source_id="s", captured_at=f"2026-11-21T10:00:0{i}.000Z",
                      processed_at="2026-11-21T10:01:00.000Z", topic="t", partition=0, offset=i,
                      status="detected", object_count=1,
                      detections=[{"class_id": 0, "class_name": "person", "confidence": 0.5,
                                   "box": [1, 2, 3, 4]}])
        for i in range(3)
    ]
    old = ["model", "model_sha256", "engine", "precision"]
    frames, detections = tmp_path / "frames.parquet", tmp_path / "detections.parquet"
    frames.write_bytes(to_parquet(warehouse_rows.frames_table(records).drop_columns(old)))
    detections.write_bytes(to_parquet(warehouse_rows.detections_table(records).drop_columns(old)))
    result = query_daily_summary(duckdb.connect(), date(2026, 11, 21), [str(frames)], [str(detections)])
    names = [c[0] for c in result.description]
    (row,) = [dict(zip(names, values, strict=True)) for values in result.fetchall()]
    assert [row[name] for name in old] == [None] * 4
    assert (row["class_name"], row["frames"], row["objects"]) == ("person", 3, 3)
