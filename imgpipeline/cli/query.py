"""`imgpipeline query` and `summary`: DuckDB over the warehouse, wherever it is stored."""

from __future__ import annotations

import sys
from datetime import date

from imgpipeline import ConfigError


def warehouse(days: list[str] | None = None):
    """A DuckDB connection with the warehouse views: over every day, or the days given (YYYY-MM-DD, UTC)
    only, whose files alone are listed and read."""
    from imgpipeline.defs.tables.views import connect
    from imgpipeline.resources import StorageResource

    return connect(StorageResource.from_env(), days=None if days is None else [day_arg(d) for d in days])


def day_arg(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{text[:40]!r} is not a day: give YYYY-MM-DD (UTC)") from None


def query(args) -> int:
    import duckdb

    con = warehouse(args.day)
    try:
        relation = con.sql(args.sql)
    except duckdb.Error as exc:
        raise ConfigError(f"query failed: {exc}") from None
    if relation is None:
        return 0
    if args.csv:
        relation.to_df().to_csv(sys.stdout, index=False)
    else:
        relation.show(max_rows=args.max_rows, max_width=10_000)
    return 0


def summary(args) -> int:
    from imgpipeline.defs.tables.views import SUMMARY_SQL

    relation = warehouse([args.date]).sql(SUMMARY_SQL, params=[args.date])
    if not relation.fetchall():
        print(f"no daily_summary rows for {args.date}; materialize the daily_summary partition "
              f"{args.date} first (see docs/warehouse.md#backfills)")
        return 1
    relation.show(max_rows=200, max_width=10_000)
    return 0


def counts(args) -> int:
    """A day's distinct objects and line crossings per source and class."""
    from imgpipeline.defs.tables.views import COUNTS_SQL
    from imgpipeline.resources import TrackingResource

    zones = TrackingResource.from_env().zones()
    con = warehouse([args.date])
    relation = con.sql(COUNTS_SQL, params=[args.date, zones.sha256, args.source])
    if not relation.fetchall():
        print(f"no tracked objects on {args.date}{' for ' + args.source if args.source else ''}; materialize "
              f"detections and object_counts for that day first (see docs/tracking.md)")
        return 1
    print(f"{args.date}: distinct objects (unique_objects) and detections of them (object_frames); "
          f"crossings per line counted with zones file {zones.path or '(none)'} "
          f"(sha256 {(zones.sha256 or '-')[:12]})")
    relation.show(max_rows=500, max_width=10_000)
    others = con.sql("SELECT DISTINCT zones_sha256 FROM object_counts WHERE CAST(hour_start AS DATE) = "
                     "CAST(? AS DATE) AND zones_sha256 IS DISTINCT FROM ?",
                     params=[args.date, zones.sha256]).fetchall()
    if others:
        print("also counted that day with other zones files: "
              + ", ".join((sha or "none")[:12] for (sha,) in others)
              + " (docs/tracking.md shows the query comparing them)")
    return 0
