"""DuckDB over the warehouse: the connection (httpfs for S3), a view per table, the everyday queries.

DuckDB reads the Parquet files where they lie: local paths, or s3:// URIs through httpfs loaded
from its PyPI package (no download at run time).

No string from outside becomes SQL text: storage keys, paths, days and settings go in as bound
parameters or as values of DuckDB's Python API, and only keys of the warehouse layout are read at all
(`table_files`); any other key is refused and reported.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa

from imgpipeline.defs.tables import TABLES, TS
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
    con.load_extension(str(httpfs_extension()))  # a path, given as a value
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


@dataclass(frozen=True)
class TableFiles:
    """A table's files: their keys, what DuckDB reads for each (a local path or an s3:// URI, in the
    same order), and the keys under the table's folder refused as not of the layout."""

    keys: list[str]
    paths: list[str]
    refused: list[str]


def table_files(storage, table: str, folder: str = "") -> TableFiles:
    """The one place storage keys become what DuckDB reads: the keys under `warehouse/<table>/<folder>`,
    each checked against the layout. A key of any other shape (a quote, a newline, a glob character, a
    stray copy) is refused for the caller to report, and never read."""
    store = storage.open()
    layout = TABLES[table]
    listed = store.list(f"{layout.folder}{folder}")
    keys = [k for k in listed if layout.is_key(k)]
    if storage.location.scheme == "file":
        paths = [str(store.folder / k) for k in keys]
    else:
        paths = [store.uri(k) for k in keys]
    return TableFiles(keys, paths, [k for k in listed if not layout.is_key(k)])


def known_days(storage, limit: int = 400) -> list[date]:
    """The days that have frames, newest first: the `dt=` folders of the frames table, from one listing of
    that folder (not of its files)."""
    found = []
    for name in storage.open().folders(TABLES["frames"].folder):
        if re.fullmatch(r"dt=[0-9]{4}-[0-9]{2}-[0-9]{2}", name):
            try:
                found.append(date.fromisoformat(name[3:]))
            except ValueError:  # dt=2026-13-45: no day
                continue
    return sorted(found, reverse=True)[:limit]


def refused_message(refused: list[str]) -> str:
    """Keys refused by table_files, each quoted (a newline in a key cannot forge a line of the report)."""
    shown = ", ".join(repr(k) for k in refused[:10])
    more = f" and {len(refused) - 10} more" if len(refused) > 10 else ""
    return (f"{len(refused)} objects under warehouse/ not read: their keys are not of the warehouse "
            f"layout (docs/contracts.md): {shown}{more}")


def create_views(con, storage, days: Iterable[date] | None = None,
                 tables: Iterable[str] | None = None) -> list[str]:
    """Views `frames`, `detections`, `daily_summary`, … over every Parquet file of each table, or with
    `days` over those days' files only (`dt=YYYY-MM-DD/`: a day's question lists and reads that day, however
    many months are stored), and with `tables` those views only; returns the keys refused (table_files).
    A view cannot take parameters, so the file list goes in through DuckDB's Python API as a value, never
    as SQL text."""
    folders = [""] if days is None else [f"dt={day.isoformat()}/" for day in sorted(set(days))]
    refused = []
    for table, layout in TABLES.items():
        if tables is not None and table not in tables:
            continue
        listed = [table_files(storage, table, folder) for folder in folders]
        files = TableFiles(*([item for found in listed for item in getattr(found, name)]
                             for name in ("keys", "paths", "refused")))
        refused += files.refused
        if files.paths:
            # By name: hours written before a column was added read it as NULL.
            source = con.read_parquet(files.paths, hive_partitioning=True, union_by_name=True)
        else:
            source = con.sql(f"SELECT * FROM {empty_select(layout.schema)}")
        source.create_view(table, replace=True)
    return refused


def duckdb_type(arrow_type: pa.DataType) -> str:
    """The DuckDB type of a warehouse column."""
    return {pa.string(): "VARCHAR", TS: "TIMESTAMPTZ", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
            pa.float64(): "DOUBLE", pa.date32(): "DATE", pa.list_(pa.int64()): "BIGINT[]",
            pa.list_(pa.string()): "VARCHAR[]"}[arrow_type]


def empty_select(schema: pa.Schema) -> str:
    columns = ", ".join(f'CAST(NULL AS {duckdb_type(f.type)}) AS "{f.name}"' for f in schema)
    # The hive path's columns too, typed as DuckDB reads them from `dt=YYYY-MM-DD/hour=HH`.
    return f"(SELECT {columns}, CAST(NULL AS DATE) AS dt, CAST(NULL AS VARCHAR) AS hour WHERE false)"


# A source none of whose detections that day belong to a track sent photos, not a sequence (a folder of
# stills: the tracker never sees an object twice): each detection is an object, and it says so.
SUMMARY_SQL = """
SELECT source_id,
       CASE WHEN max(unique_objects) OVER (PARTITION BY source_id) > 0 THEN 'sequence' ELSE 'photos' END
           AS kind,
       coalesce(engine || ' ' || precision, '(unrecorded)') AS engine,
       coalesce(class_name, '(none)') AS class_name, frames, objects,
       CASE WHEN kind = 'sequence' THEN unique_objects ELSE objects END AS distinct_objects,
       frames_with_class,
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


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def connect(storage, report: Callable[[str], None] = _to_stderr, days: Iterable[date] | None = None,
            tables: Iterable[str] | None = None):
    """A DuckDB connection with the warehouse views over whichever storage is configured (over `days`
    only, and the `tables` only, when given); keys refused as not of the layout are reported (on stderr
    unless `report` says where)."""
    import duckdb

    con = duckdb.connect(":memory:")
    prepare_connection(con, storage)
    if refused := create_views(con, storage, days, tables):
        report(refused_message(refused))
    return con
