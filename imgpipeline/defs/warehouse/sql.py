"""The daily summary's SQL: DuckDB over a day's hourly Parquet files (the connection: defs/tables/views),
and the class_hours rows the hourly build makes for it.

The day and the file lists are bound parameters; no string from outside becomes SQL text.
"""

from __future__ import annotations

import hashlib
from datetime import date

import pyarrow as pa

from imgpipeline.defs.tables.schemas import CLASS_HOURS_SCHEMA, DETECTIONS_SCHEMA, FRAMES_SCHEMA, IDENTITY
from imgpipeline.defs.tables.views import empty_select

# The hour of capture by epoch arithmetic (the data is UTC): much cheaper than hour() on TIMESTAMPTZ.
HOUR_MS = "(epoch_ms(captured_at) // 3600000)"
BUILT_BY = "imgpipeline.build"  # the build id in a table file's metadata (builds.BUILT_BY)
MADE_BY = "imgpipeline.class_hours"  # in a class_hours file: the version of the code that made it


def class_hours_sql(detections_source: str) -> str:
    """class_hours' rows from detection rows: the one definition the hourly build stores and the daily
    summary falls back to for an hour whose class_hours is missing or of another build. Grouped by the
    identity's hash, its strings taken back from the group (a fifth less time; see per_class)."""
    return f"""
    SELECT to_timestamp({HOUR_MS} * 3600) AS hour_start, source_id,
           {", ".join(f"any_value({name}) AS {name}" for name in IDENTITY)}, class_name,
           count(*) FILTER (WHERE class_rank = 1) AS frames_with_class, count(*) AS objects,
           sum(confidence) AS confidence_sum, max(confidence) AS max_confidence,
           coalesce(list(DISTINCT track_id ORDER BY track_id) FILTER (WHERE track_id IS NOT NULL), [])
               AS track_ids
    FROM {detections_source}
    GROUP BY {HOUR_MS}, source_id, hash({", ".join(IDENTITY)}), class_name
    """


def class_hours_version() -> str:
    """What class_hours rows depend on in the code: their SQL and columns. A file of another version is
    not summed (its hour's detections are read instead) until its hour is made again."""
    return hashlib.sha256(f"{class_hours_sql('d')}|{CLASS_HOURS_SCHEMA}".encode()).hexdigest()[:16]


def class_hours(detections: pa.Table) -> pa.Table:
    """An hour's class_hours from its detections, in a stable order, with the version that made them."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("hour_detections", detections.select(list(DETECTIONS_SCHEMA.names)))
    order = ", ".join(("hour_start", "source_id", *IDENTITY, "class_name"))
    rows = con.execute(f"{class_hours_sql('hour_detections')} ORDER BY {order}").to_arrow_table()
    return rows.cast(CLASS_HOURS_SCHEMA).replace_schema_metadata({MADE_BY: class_hours_version()})


def summary_sources(con, detections: dict[str, str], made: dict[str, str]) -> tuple[list[str], list[str]]:
    """(class_hours files, detections files) a day's summary reads: each hour's class_hours where it was
    made with the detections stored now (the same build id in both files' metadata) by this version of
    the code, else that hour's detections. Both maps: an hour's name (the key below its table's folder)
    → the path DuckDB reads. A class_hours file that cannot be read is not summed; a detections file
    that cannot be read fails the summary, as reading its rows would."""
    import duckdb

    found = _stamps(con, list(detections.values()))
    for hour in detections.keys() & made.keys():
        try:
            found.update(_stamps(con, [made[hour]]))
        except duckdb.Error:
            continue  # a derived file, damaged or cut short: its hour's detections are read instead
    version, rollups, raw = class_hours_version(), [], []
    for hour, path in detections.items():
        build = found.get((path, BUILT_BY))
        current = (hour in made and build is not None and found.get((made[hour], BUILT_BY)) == build
                   and found.get((made[hour], MADE_BY)) == version)
        (rollups if current else raw).append(made[hour] if current else path)
    return rollups, raw


def _stamps(con, paths: list[str]) -> dict[tuple[str, str], str]:
    """(path, key) → value of the build and class_hours metadata keys of Parquet files, from footers."""
    if not paths:
        return {}
    rows = con.execute("SELECT file_name, decode(key), decode(value) FROM parquet_kv_metadata($paths) "
                       "WHERE decode(key) IN ($built, $made)",
                       {"paths": paths, "built": BUILT_BY, "made": MADE_BY}).fetchall()
    return {(path, key): value for path, key, value in rows}


def rows_in(con, paths: list[str]) -> int:
    """The rows of Parquet files, from their footers."""
    if not paths:
        return 0
    (rows,) = con.execute("SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata($paths)",
                          {"paths": list(paths)}).fetchone()
    return int(rows)


def query_daily_summary(con, day: date, frames_paths: list[str], detections_paths: list[str],
                        class_hours_paths: list[str] = ()):
    """One day's summary per source × detector identity × class over the hourly Parquet files (frames
    of unknown identity, landed before it was recorded, group together): DuckDB's result. The objects
    come from class_hours files and from detections files (hours without a current class_hours), which
    must not cover the same hours (summary_sources). The day and the file lists are bound parameters."""
    params: dict = {"day": day}

    def source(name, paths, schema):
        if not paths:
            return empty_select(schema)
        params[name] = list(paths)
        # Every declared column, whatever the files hold: files written before a column existed read it
        # as NULL even when no file of the day has it.
        return (f"(SELECT * FROM {empty_select(schema)} UNION ALL BY NAME "
                f"SELECT * FROM read_parquet(${name}, union_by_name = true))")

    sql = _daily_summary_sql(source("frames", frames_paths, FRAMES_SCHEMA),
                             source("detections", detections_paths, DETECTIONS_SCHEMA),
                             source("class_hours", class_hours_paths, CLASS_HOURS_SCHEMA))
    return con.execute(sql, params)


def _daily_summary_sql(frames_source: str, detections_source: str, class_hours_source: str) -> str:
    identity = ", ".join(IDENTITY)
    same = " AND ".join(f"s.{name} IS NOT DISTINCT FROM c.{name}" for name in ("source_id", *IDENTITY))
    any_identity = ", ".join(f"any_value({name}) AS {name}" for name in IDENTITY)
    columns = ", ".join(CLASS_HOURS_SCHEMA.names)
    per_hour = ", ".join(f"CAST(coalesce(sum(objects) FILTER (WHERE hour_of_day = {h}), 0) AS BIGINT)"
                         for h in range(24))
    return f"""
    WITH fr AS (SELECT * FROM {frames_source}),
         ch AS (SELECT {columns}, CAST((epoch_ms(hour_start) // 3600000) % 24 AS INTEGER) AS hour_of_day
                FROM (SELECT {columns} FROM {class_hours_source}
                      UNION ALL SELECT {columns} FROM ({class_hours_sql(detections_source)}))),
    -- The three quantiles from one sort, and the commonest size as one number (the width in the upper 32
    -- bits, the height in the lower) rather than a string made for every frame: together half the cost.
    per_source_raw AS (
        SELECT source_id, {identity}, CAST($day AS DATE) AS day, count(*) AS frames,
               avg(brightness) AS mean_brightness,
               quantile_cont(brightness, [0.1, 0.5, 0.9]) AS brightness_quantiles,
               mode((CAST(width AS BIGINT) << 32) | CAST(height AS BIGINT)) AS typical_size_number,
               CAST(median(bytes) AS DOUBLE) AS median_bytes,
               avg(CASE WHEN status = 'skipped_dark' THEN 1.0 ELSE 0.0 END) AS dark_share,
               avg(CASE WHEN status = 'error' THEN 1.0 ELSE 0.0 END) AS error_share,
               avg(CASE WHEN status = 'shed' THEN 1.0 ELSE 0.0 END) AS shed_share
        FROM fr GROUP BY source_id, {identity}
    ),
    per_source AS (
        SELECT *, brightness_quantiles[1] AS p10_brightness, brightness_quantiles[2] AS p50_brightness,
               brightness_quantiles[3] AS p90_brightness,
               CAST(typical_size_number >> 32 AS VARCHAR) || 'x'
                   || CAST(typical_size_number & 4294967295 AS VARCHAR) AS typical_size
        FROM per_source_raw
    ),
    -- The hours' rows summed per class. Grouped by the identity's hash, not its four strings (taken back
    -- from the group's rows); two identities of one source and class with the same 64-bit hash would be
    -- merged (about one chance in 2^64 for a pair). A track seen in several hours counts once.
    per_class AS (
        SELECT source_id, {any_identity}, class_name,
               CAST(sum(frames_with_class) AS BIGINT) AS frames_with_class,
               CAST(sum(objects) AS BIGINT) AS objects,
               CAST(len(list_distinct(flatten(list(track_ids)))) AS BIGINT) AS unique_objects,
               sum(confidence_sum) / sum(objects) AS mean_confidence, max(max_confidence) AS max_confidence,
               [{per_hour}] AS objects_per_hour
        FROM ch GROUP BY source_id, hash({identity}), class_name
    )
    SELECT s.day, s.source_id, {", ".join(f"s.{name}" for name in IDENTITY)}, c.class_name, s.frames,
           coalesce(c.frames_with_class, 0) AS frames_with_class, coalesce(c.objects, 0) AS objects,
           coalesce(c.unique_objects, 0) AS unique_objects,
           c.mean_confidence, c.max_confidence,
           coalesce(c.objects_per_hour, list_transform(range(24), h -> CAST(0 AS BIGINT)))
               AS objects_per_hour,
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
