"""`bench scale`'s warehouse: the hours its cameras filled, built whole, extended and summarized in
this process and timed, and what screening duplicates costs a run.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from imgpipeline.resources.storage import Storage


def build_warehouse(storage, hours: list[datetime], dagster_home: Path, empty_store) -> dict:
    """The hourly `frames` and `detections` of the hours covered made whole, then `daily_summary` of their
    days, materialized in this process (one run each, as a backfill makes them), timed; the same over a
    store with no frames, before (warming up) and after, for the fixed cost of a build; and the fullest
    hour extended by its partitions' last ranges, as the automation extends the current hour."""
    import dagster as dg
    from dagster_duckdb import DuckDBResource

    from imgpipeline.defs.hours import hour_key
    from imgpipeline.defs.warehouse.assets import WHOLE, daily_summary, hourly_tables
    from imgpipeline.lib.instance import open_instance
    from imgpipeline.resources import TrackingResource

    if not hours:
        return {"hours": 0, "days": 0, "hourly_s": 0.0, "daily_s": 0.0, "empty_hourly_s": 0.0,
                "empty_daily_s": 0.0, "parquet_files": 0, "hourly_files": 0, "daily_files": 0,
                "extension": None}
    days = sorted({h.strftime("%Y-%m-%d") for h in hours})
    print(f"warehouse: {len(hours)} hourly partition(s) ({hour_key(hours[0])} … {hour_key(hours[-1])}) and "
          f"{len(days)} day(s) of daily_summary, in this process …")
    tracking, duckdb = TrackingResource.from_env(), DuckDBResource(database=":memory:")

    def build(instance, store: Storage, assets, first: str, last: str, whole: bool = True) -> tuple[float,
              dict]:
        started = time.perf_counter()
        result = dg.materialize(
            [assets], instance=instance, resources={"storage": store, "tracking": tracking, "duckdb": duckdb},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last,
                  **({WHOLE: "1"} if whole else {})})
        if not result.success:
            raise SystemExit(f"the warehouse build of {first} … {last} failed")
        metadata = result.get_asset_materialization_events()[0].materialization.metadata
        return round(time.perf_counter() - started, 2), {k: v.value for k, v in metadata.items()}

    hourly = (hourly_tables, hour_key(hours[0]), hour_key(hours[-1]))
    daily = (daily_summary, days[0], days[-1])
    with open_instance(dagster_home) as instance:
        build(instance, empty_store, *hourly)
        build(instance, empty_store, *daily)
        timings = {"hourly_s": build(instance, storage, *hourly)[0],
                   "daily_s": build(instance, storage, *daily)[0],
                   "empty_hourly_s": build(instance, empty_store, *hourly)[0],
                   "empty_daily_s": build(instance, empty_store, *daily)[0]}
        fullest = max(hours, key=lambda h: landed_in(storage, h))
        timings["extension"] = extend_hour(storage, fullest, lambda whole: build(
            instance, storage, hourly_tables, hour_key(fullest), hour_key(fullest), whole))
    keys = [k for k in storage.open().list("warehouse/") if k.endswith(".parquet")]
    hourly_files = [k for k in keys if k.split("/")[1] in ("frames", "detections", "class_hours")]
    daily_files = [k for k in keys if k.split("/")[1] == "daily_summary"]
    return {"hours": len(hours), "days": len(days), **timings, "hourly_files": len(hourly_files),
            "daily_files": len(daily_files), "parquet_files": len(hourly_files) + len(daily_files)}


def landed_in(storage, hour: datetime) -> int:
    from imgpipeline.defs.records.reader import landing_keys

    return len(landing_keys(storage.open(), hour))


def extend_hour(storage, hour: datetime, build) -> dict:
    """An hour made whole without its partitions' last landing files, then extended by them (timed), as
    the automation adds a run's ranges to the current hour; and what reading and writing the hour's
    stored tables costs a frame (an extension's part that grows with the hour)."""
    from imgpipeline.defs.records.keys import ranges_of
    from imgpipeline.defs.records.reader import landing_keys, parse_records
    from imgpipeline.defs.tables import DETECTIONS, FRAMES, to_parquet

    store = storage.open()
    last = [files[-1][2] for files in ranges_of(landing_keys(store, hour)).values()]
    held = {key: store.get(key) for key in last}
    store.delete_many(list(held))
    try:
        build(True)
    finally:
        for key, data in held.items():
            store.put(key, data)
    seconds, metadata = build(False)
    started = time.perf_counter()
    stored = 0
    for table in (FRAMES, DETECTIONS):
        rows = table.read(store, table.hour_key(hour))
        stored += rows.num_rows if table is FRAMES else 0
        to_parquet(rows)
    merge_s = time.perf_counter() - started
    new = sum(1 for data in held.values() for _ in parse_records(data))
    return {"extend_s": seconds, "extended": metadata.get("hours_extended") == 1, "files": len(held),
            "new_frames": new, "stored_frames": stored, "merge_s_per_frame": merge_s / max(1, stored)}


def screening_cost(storage, landing: dict) -> dict:
    """What a run pays to screen duplicates: it reads the frame ids already landed in its hour by its
    partition's ranges within the window (Screening.window). Timed here over the whole
    fullest hour, per record read."""
    from imgpipeline.defs.streaming.detect_frames import Screening
    from imgpipeline.defs.streaming.landing import Landed

    window = Screening.from_env().window
    if not landing["hours"]:
        return {"hour_records": 0, "read_s": 0.0, "s_per_record": 0.0, "window": window}
    hour = max(landing["hours"], key=lambda h: landing["per_hour"][h])
    store = storage.open()
    started = time.perf_counter()
    seen = Landed().of(store, hour, "")
    elapsed = time.perf_counter() - started
    return {"hour_records": len(seen), "read_s": round(elapsed, 3),
            "s_per_record": elapsed / len(seen) if seen else 0.0, "window": window}
