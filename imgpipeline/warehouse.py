"""The warehouse: table schemas, Parquet files under the storage root, and DuckDB over them.

Hourly tables live at `warehouse/<table>/dt=YYYY-MM-DD/hour=HH/part-0.parquet`, the daily
summary at `warehouse/daily_summary/dt=YYYY-MM-DD/part-0.parquet`. The same code reads and
writes them on the local folder and on S3; DuckDB reads S3 through httpfs.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from imgpipeline.config import resolved
from imgpipeline.jobs.detect_frames import LANDING
from imgpipeline.partitions import hour_path

TS = pa.timestamp("ms", tz="UTC")

FRAMES_SCHEMA = pa.schema([
    ("frame_id", pa.string()), ("source_id", pa.string()), ("file_name", pa.string()),
    ("uri", pa.string()), ("sha256", pa.string()), ("content_type", pa.string()),
    ("captured_at", TS), ("ingested_at", TS), ("processed_at", TS),
    ("status", pa.string()), ("error", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("bytes", pa.int64()),
    ("brightness", pa.float64()), ("contrast", pa.float64()), ("sharpness", pa.float64()),
    ("object_count", pa.int32()), ("model", pa.string()),
    ("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()), ("run_id", pa.string()),
])

DETECTIONS_SCHEMA = pa.schema([
    ("frame_id", pa.string()), ("source_id", pa.string()), ("captured_at", TS),
    ("detection_index", pa.int32()), ("class_id", pa.int32()), ("class_name", pa.string()),
    ("confidence", pa.float64()),
    # 1 for the most confident detection of its class in the frame, 2 for the next, …
    ("class_rank", pa.int32()),
    ("x", pa.int32()), ("y", pa.int32()), ("w", pa.int32()), ("h", pa.int32()),
    ("track_id", pa.int64()),
])

DAILY_SUMMARY_SCHEMA = pa.schema([
    ("day", pa.date32()), ("source_id", pa.string()), ("class_name", pa.string()),
    ("frames", pa.int64()), ("frames_with_class", pa.int64()), ("objects", pa.int64()),
    ("mean_confidence", pa.float64()), ("max_confidence", pa.float64()),
    ("objects_per_hour", pa.list_(pa.int64())),
    ("mean_brightness", pa.float64()), ("p10_brightness", pa.float64()),
    ("p50_brightness", pa.float64()), ("p90_brightness", pa.float64()),
    ("typical_size", pa.string()), ("median_bytes", pa.float64()),
    ("dark_share", pa.float64()), ("error_share", pa.float64()),
])

SCHEMAS = {"frames": FRAMES_SCHEMA, "detections": DETECTIONS_SCHEMA, "daily_summary": DAILY_SUMMARY_SCHEMA}


def hourly_key(table: str, hour: datetime) -> str:
    return f"warehouse/{table}/{hour_path(hour)}/part-0.parquet"


def daily_key(table: str, day: date) -> str:
    return f"warehouse/{table}/dt={day.isoformat()}/part-0.parquet"


def to_parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def from_parquet(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def concat(tables: list[pa.Table], table_name: str) -> pa.Table:
    return pa.concat_tables(tables) if tables else SCHEMAS[table_name].empty_table()


# -- landing metadata → hourly tables ------------------------------------------------------

def landing_records(store, hour: datetime) -> list[dict]:
    """Every landing record of an event-time hour, as written by the runs."""
    records = []
    for key in store.list(f"{LANDING}/{hour_path(hour)}/"):
        if key.endswith(".jsonl"):
            records += [json.loads(line) for line in store.get(key).splitlines() if line.strip()]
    return records


def latest_per_frame(records: list[dict]) -> list[dict]:
    """One record per frame_id: the latest processing wins; ordered by capture time and id."""
    best: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: (r["processed_at"] or "", r["topic"] or "",
                                                 r["partition"] or 0, r["offset"] or 0)):
        best[record["frame_id"]] = record
    return sorted(best.values(), key=lambda r: (r["captured_at"], r["frame_id"]))


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC) if text else None


def frames_table(records: list[dict]) -> pa.Table:
    rows = []
    for r in records:
        uri = r.get("uri")
        rows.append({
            **{name: r.get(name) for name in FRAMES_SCHEMA.names},
            "file_name": uri.rsplit("/", 1)[-1] if uri else None,
            "captured_at": _time(r.get("captured_at")),
            "ingested_at": _time(r.get("ingested_at")),
            "processed_at": _time(r.get("processed_at")),
        })
    return pa.Table.from_pylist(rows, schema=FRAMES_SCHEMA)


def detections_table(records: list[dict]) -> pa.Table:
    rows = []
    for r in records:
        detections = r.get("detections") or []
        order = sorted(range(len(detections)), key=lambda i: -detections[i]["confidence"])
        ranks, seen = {}, {}
        for i in order:
            name = detections[i]["class_name"]
            seen[name] = ranks[i] = seen.get(name, 0) + 1
        for index, d in enumerate(detections):
            x, y, w, h = d["box"]
            rows.append({
                "frame_id": r["frame_id"], "source_id": r["source_id"],
                "captured_at": _time(r["captured_at"]), "detection_index": index,
                "class_id": d["class_id"], "class_name": d["class_name"],
                "confidence": d["confidence"], "class_rank": ranks[index],
                "x": x, "y": y, "w": w, "h": h,
                "track_id": d.get("track_id"),
            })
    return pa.Table.from_pylist(rows, schema=DETECTIONS_SCHEMA)


# -- DuckDB ------------------------------------------------------------------------------------

def httpfs_extension() -> Path:
    import duckdb
    import duckdb_extension_httpfs

    folder = Path(duckdb_extension_httpfs.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    return next(folder.rglob("httpfs.duckdb_extension"))


def prepare_connection(con, storage) -> None:
    """UTC session; for S3, httpfs loaded from its PyPI package and a secret for the root."""
    con.execute("SET TimeZone = 'UTC'")
    location = storage.location
    if location.scheme != "s3":
        return
    con.execute(f"LOAD '{httpfs_extension()}'")
    options = [f"REGION '{storage.region}'"]
    key_id, secret = resolved(storage.access_key_id), resolved(storage.secret_access_key)
    if key_id:
        options += [f"KEY_ID '{key_id}'", f"SECRET '{secret}'"]
    else:
        options.append("PROVIDER credential_chain")
    if storage.endpoint_url:
        endpoint = storage.endpoint_url
        use_ssl = endpoint.startswith("https://")
        options += [f"ENDPOINT '{endpoint.split('://', 1)[-1].rstrip('/')}'", "URL_STYLE 'path'",
                    f"USE_SSL {'true' if use_ssl else 'false'}"]
    con.execute(f"CREATE OR REPLACE SECRET imgpipeline_s3 (TYPE s3, {', '.join(options)})")


def scan_path(storage, key: str) -> str:
    """What DuckDB reads for a key: a local path or an s3:// URI."""
    store = storage.open()
    if storage.location.scheme == "file":
        return str(store.folder / key)
    return store.uri(key)


def create_views(con, storage) -> list[str]:
    """Views `frames`, `detections`, `daily_summary` over every Parquet file of each table."""
    store = storage.open()
    created = []
    for table, schema in SCHEMAS.items():
        keys = [k for k in store.list(f"warehouse/{table}/") if k.endswith(".parquet")]
        if keys:
            paths = ", ".join(f"'{scan_path(storage, k)}'" for k in keys)
            source = f"read_parquet([{paths}], hive_partitioning = true)"
        else:
            source = _empty_select(schema)
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {source}")
        created.append(table)
    return created


def _empty_select(schema: pa.Schema) -> str:
    types = {pa.string(): "VARCHAR", TS: "TIMESTAMPTZ", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
             pa.float64(): "DOUBLE", pa.date32(): "DATE", pa.list_(pa.int64()): "BIGINT[]"}
    columns = ", ".join(f'CAST(NULL AS {types[f.type]}) AS "{f.name}"' for f in schema)
    return f"(SELECT {columns} WHERE false)"


def daily_summary_sql(day: date, frames_paths: list[str], detections_paths: list[str]) -> str:
    """DuckDB SQL for one day's summary per source × class over the hourly Parquet files."""
    def source(paths, schema):
        return (f"read_parquet([{', '.join(repr(p) for p in paths)}])" if paths else _empty_select(schema))

    # Hours by epoch arithmetic (the data is UTC): much cheaper than hour() on TIMESTAMPTZ.
    hour = "CAST((epoch_ms(captured_at) // 3600000) % 24 AS INTEGER)"
    return f"""
    WITH fr AS (SELECT * FROM {source(frames_paths, FRAMES_SCHEMA)}),
         de AS (SELECT * FROM {source(detections_paths, DETECTIONS_SCHEMA)}),
    per_source AS (
        SELECT source_id, DATE '{day.isoformat()}' AS day, count(*) AS frames,
               avg(brightness) AS mean_brightness,
               quantile_cont(brightness, 0.1) AS p10_brightness,
               quantile_cont(brightness, 0.5) AS p50_brightness,
               quantile_cont(brightness, 0.9) AS p90_brightness,
               mode(CAST(width AS VARCHAR) || 'x' || CAST(height AS VARCHAR)) AS typical_size,
               CAST(median(bytes) AS DOUBLE) AS median_bytes,
               avg(CASE WHEN status = 'skipped_dark' THEN 1.0 ELSE 0.0 END) AS dark_share,
               avg(CASE WHEN status = 'error' THEN 1.0 ELSE 0.0 END) AS error_share
        FROM fr GROUP BY source_id
    ),
    per_class AS (
        SELECT source_id, class_name, count(*) FILTER (WHERE class_rank = 1) AS frames_with_class,
               count(*) AS objects, avg(confidence) AS mean_confidence,
               max(confidence) AS max_confidence, histogram({hour}) AS hours
        FROM de GROUP BY source_id, class_name
    )
    SELECT s.day, s.source_id, c.class_name, s.frames,
           coalesce(c.frames_with_class, 0) AS frames_with_class, coalesce(c.objects, 0) AS objects,
           c.mean_confidence, c.max_confidence,
           list_transform(range(24), h -> coalesce(c.hours[CAST(h AS INTEGER)], 0)) AS objects_per_hour,
           s.mean_brightness, s.p10_brightness, s.p50_brightness, s.p90_brightness,
           s.typical_size, s.median_bytes, s.dark_share, s.error_share
    FROM per_source s LEFT JOIN per_class c USING (source_id)
    ORDER BY s.source_id, c.class_name NULLS FIRST
    """


def markdown_table(table: pa.Table, limit: int = 20) -> str:
    """A small Markdown preview (the UI renders it)."""
    names = table.column_names
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in table.slice(0, limit).to_pylist():
        cells = []
        for name in names:
            value = row[name]
            if isinstance(value, float):
                value = f"{value:.3f}"
            elif isinstance(value, list):
                value = " ".join(str(v) for v in value)
            cells.append("" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    if table.num_rows > limit:
        lines.append(f"\n… {table.num_rows - limit} more rows")
    return "\n".join(lines)


# -- checks: pure functions over tables, reported as asset checks ------------------------------

def schema_problems(table: pa.Table, schema: pa.Schema) -> list[str]:
    """Differences between a stored table's schema and the declared one."""
    if table.schema.remove_metadata().equals(schema):
        return []
    stored = {f.name: f.type for f in table.schema}
    problems = [f"missing column {f.name}" for f in schema if f.name not in stored]
    problems += [f"{f.name} is {stored[f.name]}, declared {f.type}" for f in schema
                 if f.name in stored and stored[f.name] != f.type]
    problems += [f"undeclared column {name}" for name in stored if name not in schema.names]
    return problems or ["column order differs from the declaration"]


def duplicate_frame_ids(table: pa.Table) -> list[str]:
    ids = table.column("frame_id").to_pylist()
    seen, dupes = set(), set()
    for frame_id in ids:
        (dupes if frame_id in seen else seen).add(frame_id)
    return sorted(dupes)


def landing_mismatch(table: pa.Table, records: list[dict]) -> dict:
    """Frames missing from the table or extra in it, against the distinct landing frame ids."""
    stored = set(table.column("frame_id").to_pylist())
    landed = {r["frame_id"] for r in records}
    return {"missing": sorted(landed - stored), "extra": sorted(stored - landed),
            "rows": table.num_rows, "distinct_landed": len(landed)}


def summary_mismatch(summary: pa.Table, frames: pa.Table, detections: pa.Table) -> list[str]:
    """Where a day's summary disagrees with the hourly tables it was computed from."""
    problems = []
    if sum(summary.column("objects").to_pylist()) != detections.num_rows:
        problems.append(f"objects {sum(summary.column('objects').to_pylist())} != "
                        f"{detections.num_rows} detection rows")
    per_source = {}
    for row in summary.select(["source_id", "frames"]).to_pylist():
        per_source[row["source_id"]] = row["frames"]
    counted: dict[str, int] = {}
    for source in frames.column("source_id").to_pylist():
        counted[source] = counted.get(source, 0) + 1
    if per_source != counted:
        problems.append(f"frames per source {per_source} != hourly rows {counted}")
    return problems


SUMMARY_SQL = """
SELECT source_id, coalesce(class_name, '(none)') AS class_name, frames, objects, frames_with_class,
       round(mean_confidence, 3) AS mean_conf, round(max_confidence, 3) AS max_conf,
       round(mean_brightness, 1) AS brightness, typical_size,
       round(dark_share, 3) AS dark_share, round(error_share, 3) AS error_share
FROM daily_summary WHERE day = CAST(? AS DATE)
ORDER BY source_id, objects DESC, class_name
"""


def connect(storage):
    """A DuckDB connection with the warehouse views over whichever storage is configured."""
    import duckdb

    con = duckdb.connect(":memory:")
    prepare_connection(con, storage)
    create_views(con, storage)
    return con
