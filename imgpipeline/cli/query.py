"""`imgpipeline query` and `summary`: DuckDB over the warehouse, wherever it is stored."""

from __future__ import annotations

import sys

from imgpipeline import ConfigError


def warehouse():
    """A DuckDB connection with the views frames, detections and daily_summary."""
    from imgpipeline.defs.warehouse.sql import connect
    from imgpipeline.resources import StorageResource

    return connect(StorageResource.from_env())


def query(args) -> int:
    import duckdb

    con = warehouse()
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
    from imgpipeline.defs.warehouse.sql import SUMMARY_SQL

    relation = warehouse().sql(SUMMARY_SQL, params=[args.date])
    if not relation.fetchall():
        print(f"no daily_summary rows for {args.date}; materialize the daily_summary partition "
              f"{args.date} first (see the README's Backfills section)")
        return 1
    relation.show(max_rows=200, max_width=10_000)
    return 0
