"""The daily summary's SQL: DuckDB over a day's hourly Parquet files (the connection: defs/tables/views).

The day and the file lists are bound parameters; no string from outside becomes SQL text.
"""

from __future__ import annotations

from datetime import date

import pyarrow as pa

from imgpipeline.defs.tables import DETECTIONS_SCHEMA, FRAMES_SCHEMA, IDENTITY
from imgpipeline.defs.tables.views import empty_select


def query_daily_summary(con, day: date, frames_paths: list[str], detections_paths: list[str]):
    """One day's summary per source × detector identity × class over the hourly Parquet files (frames
    of unknown identity, landed before it was recorded, group together): DuckDB's result. The day and
    the file lists are bound parameters."""
    params: dict = {"day": day}

    def source(name, paths, schema):
        if not paths:
            return empty_select(schema)
        params[name] = paths
        return f"read_parquet(${name}, union_by_name = true)"

    sql = _daily_summary_sql(source("frames", frames_paths, FRAMES_SCHEMA),
                             source("detections", detections_paths, DETECTIONS_SCHEMA))
    return con.execute(sql, params)


def _daily_summary_sql(frames_source: str, detections_source: str) -> str:
    # Hours by epoch arithmetic (the data is UTC): much cheaper than hour() on TIMESTAMPTZ.
    hour = "CAST((epoch_ms(captured_at) // 3600000) % 24 AS INTEGER)"
    identity = ", ".join(IDENTITY)
    same = " AND ".join(f"s.{name} IS NOT DISTINCT FROM c.{name}" for name in ("source_id", *IDENTITY))
    any_identity = ", ".join(f"any_value({name}) AS {name}" for name in IDENTITY)
    return f"""
    WITH fr AS (SELECT * FROM {frames_source}),
         de AS (SELECT * FROM {detections_source}),
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
    -- Grouped by the identity's hash, not its four strings (taken back from the group's rows): counting
    -- a class's distinct tracks costs a third less. Two identities of one source and class with the same
    -- 64-bit hash would be merged, and the check totals_match_hourly would say so.
    per_class AS (
        SELECT source_id, {any_identity}, class_name,
               count(*) FILTER (WHERE class_rank = 1) AS frames_with_class, count(*) AS objects,
               count(DISTINCT track_id) AS unique_objects,
               avg(confidence) AS mean_confidence, max(confidence) AS max_confidence,
               histogram({hour}) AS hours
        FROM de GROUP BY source_id, hash({identity}), class_name
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
