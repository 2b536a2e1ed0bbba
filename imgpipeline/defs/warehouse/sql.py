"""DuckDB over the warehouse: the connection (httpfs for S3), the views, the summary SQL.

DuckDB reads the Parquet files where they lie: local paths, or s3:// URIs through httpfs loaded
from its PyPI package (no download at run time).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa

from imgpipeline.defs.warehouse.tables import DETECTIONS_SCHEMA, FRAMES_SCHEMA, IDENTITY, SCHEMAS, TS
from imgpipeline.resources.settings import resolved


def httpfs_extension() -> Path:
    import duckdb
    import duckdb_extension_httpfs

    folder = Path(duckdb_extension_httpfs.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    return next(folder.rglob("httpfs.duckdb_extension"))


def prepare_connection(con, storage) -> None:
    """UTC session; for S3, httpfs loaded from its PyPI package and a secret for the root.

    Every value goes in as a parameter: the S3 keys never appear in SQL text (logs, query history).
    """
    con.execute("SET TimeZone = 'UTC'")
    location = storage.location
    if location.scheme != "s3":
        return
    con.execute(f"LOAD '{httpfs_extension()}'")
    options, values = ["REGION ?"], [storage.region]
    key_id, secret = resolved(storage.access_key_id), resolved(storage.secret_access_key)
    if key_id:
        options += ["KEY_ID ?", "SECRET ?"]
        values += [key_id, secret]
    else:
        options.append("PROVIDER credential_chain")
    if storage.endpoint_url:
        endpoint = storage.endpoint_url
        options += ["ENDPOINT ?", "URL_STYLE 'path'", "USE_SSL ?"]
        values += [endpoint.split("://", 1)[-1].rstrip("/"), endpoint.startswith("https://")]
    con.execute(f"CREATE OR REPLACE SECRET imgpipeline_s3 (TYPE s3, {', '.join(options)})", values)


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
            # By name: hours written before a column was added read it as NULL.
            source = f"read_parquet([{paths}], hive_partitioning = true, union_by_name = true)"
        else:
            source = _empty_select(schema)
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {source}")
        created.append(table)
    return created


def duckdb_type(arrow_type: pa.DataType) -> str:
    """The DuckDB type of a warehouse column."""
    return {pa.string(): "VARCHAR", TS: "TIMESTAMPTZ", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
            pa.float64(): "DOUBLE", pa.date32(): "DATE", pa.list_(pa.int64()): "BIGINT[]",
            pa.list_(pa.string()): "VARCHAR[]"}[arrow_type]


def _empty_select(schema: pa.Schema) -> str:
    columns = ", ".join(f'CAST(NULL AS {duckdb_type(f.type)}) AS "{f.name}"' for f in schema)
    # The hive path's columns too, typed as DuckDB reads them from `dt=YYYY-MM-DD/hour=HH`.
    return f"(SELECT {columns}, CAST(NULL AS DATE) AS dt, CAST(NULL AS VARCHAR) AS hour WHERE false)"


def daily_summary_sql(day: date, frames_paths: list[str], detections_paths: list[str]) -> str:
    """DuckDB SQL for one day's summary per source × detector identity × class over the hourly
    Parquet files (frames of unknown identity, landed before it was recorded, group together)."""
    def source(paths, schema):
        return (f"read_parquet([{', '.join(repr(p) for p in paths)}], union_by_name = true)" if paths
                else _empty_select(schema))

    # Hours by epoch arithmetic (the data is UTC): much cheaper than hour() on TIMESTAMPTZ.
    hour = "CAST((epoch_ms(captured_at) // 3600000) % 24 AS INTEGER)"
    identity = ", ".join(IDENTITY)
    same = " AND ".join(f"s.{name} IS NOT DISTINCT FROM c.{name}" for name in ("source_id", *IDENTITY))
    return f"""
    WITH fr AS (SELECT * FROM {source(frames_paths, FRAMES_SCHEMA)}),
         de AS (SELECT * FROM {source(detections_paths, DETECTIONS_SCHEMA)}),
    per_source AS (
        SELECT source_id, {identity}, DATE '{day.isoformat()}' AS day, count(*) AS frames,
               avg(brightness) AS mean_brightness,
               quantile_cont(brightness, 0.1) AS p10_brightness,
               quantile_cont(brightness, 0.5) AS p50_brightness,
               quantile_cont(brightness, 0.9) AS p90_brightness,
               mode(CAST(width AS VARCHAR) || 'x' || CAST(height AS VARCHAR)) AS typical_size,
               CAST(median(bytes) AS DOUBLE) AS median_bytes,
               avg(CASE WHEN status = 'skipped_dark' THEN 1.0 ELSE 0.0 END) AS dark_share,
               avg(CASE WHEN status = 'error' THEN 1.0 ELSE 0.0 END) AS error_share,
               avg(CASE WHEN status = 'shed' THEN 1.0 ELSE 0.0 END) AS shed_share
        FROM fr GROUP BY source_id, {identity}
    ),
    per_class AS (
        SELECT source_id, {identity}, class_name, count(*) FILTER (WHERE class_rank = 1) AS frames_with_class,
               count(*) AS objects, count(DISTINCT track_id) AS unique_objects,
               avg(confidence) AS mean_confidence,
               max(confidence) AS max_confidence, histogram({hour}) AS hours
        FROM de GROUP BY source_id, {identity}, class_name
    )
    SELECT s.day, s.source_id, {", ".join(f"s.{name}" for name in IDENTITY)}, c.class_name, s.frames,
           coalesce(c.frames_with_class, 0) AS frames_with_class, coalesce(c.objects, 0) AS objects,
           coalesce(c.unique_objects, 0) AS unique_objects,
           c.mean_confidence, c.max_confidence,
           list_transform(range(24), h -> coalesce(c.hours[CAST(h AS INTEGER)], 0)) AS objects_per_hour,
           s.mean_brightness, s.p10_brightness, s.p50_brightness, s.p90_brightness,
           s.typical_size, s.median_bytes, s.dark_share, s.error_share, s.shed_share
    FROM per_source s LEFT JOIN per_class c ON {same}
    ORDER BY s.source_id, {", ".join(f"s.{name}" for name in IDENTITY)}, c.class_name NULLS FIRST
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


SUMMARY_SQL = """
SELECT source_id, coalesce(engine || ' ' || precision, '(unrecorded)') AS engine,
       coalesce(class_name, '(none)') AS class_name, frames, objects, unique_objects, frames_with_class,
       round(mean_confidence, 3) AS mean_conf, round(max_confidence, 3) AS max_conf,
       round(mean_brightness, 1) AS brightness, typical_size,
       round(dark_share, 3) AS dark_share, round(error_share, 3) AS error_share,
       round(shed_share, 3) AS shed_share
FROM daily_summary WHERE day = CAST(? AS DATE)
ORDER BY source_id, engine, objects DESC, class_name
"""


# A day's distinct objects per source and class (from the tracked detections) and the line crossings
# each way, counted with one zones file (parameters: day, zones sha256, source or NULL for all).
COUNTS_SQL = """
WITH objects AS (
    SELECT source_id, class_name, count(*) AS object_frames, count(DISTINCT track_id) AS unique_objects
    FROM detections
    WHERE CAST(captured_at AS DATE) = CAST($1 AS DATE) AND ($3 IS NULL OR source_id = $3)
    GROUP BY ALL
),
lines AS (
    SELECT source_id, class_name, name AS line, CAST(sum(crossed_in) AS BIGINT) AS crossed_in,
           CAST(sum(crossed_out) AS BIGINT) AS crossed_out
    FROM object_counts
    WHERE kind = 'line' AND CAST(hour_start AS DATE) = CAST($1 AS DATE)
          AND zones_sha256 IS NOT DISTINCT FROM $2 AND ($3 IS NULL OR source_id = $3)
    GROUP BY ALL
)
SELECT o.source_id, o.class_name, o.unique_objects, o.object_frames, l.line, l.crossed_in, l.crossed_out
FROM objects o LEFT JOIN lines l USING (source_id, class_name)
WHERE o.unique_objects > 0
ORDER BY o.source_id, o.unique_objects DESC, o.class_name, l.line
"""


def connect(storage):
    """A DuckDB connection with the warehouse views over whichever storage is configured."""
    import duckdb

    con = duckdb.connect(":memory:")
    prepare_connection(con, storage)
    create_views(con, storage)
    return con
