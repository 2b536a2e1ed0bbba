"""Warehouse assets: hourly `frames` and `detections`, daily `daily_summary` (DuckDB).

Each run handles a whole partition range (single-run backfills) and rewrites the files of
every partition in it, so re-materializing gives the same rows in the same order.
"""

from datetime import date, datetime, timedelta

import dagster as dg
from dagster_duckdb import DuckDBResource

from imgpipeline import warehouse as wh
from imgpipeline.assets.streaming import landing_metadata
from imgpipeline.partitions import daily_partitions, hourly_partitions
from imgpipeline.resources import StorageResource

# Like eager(), but for every hour, not just the latest: late frames re-materialize their hour.
on_landing_update = dg.AutomationCondition.eager().without(
    dg.AutomationCondition.in_latest_time_window()
).with_label("landing updated")

FRAMES_CHECKS = ["schema_as_declared", "no_duplicate_frame_id", "matches_landing"]
DETECTIONS_CHECKS = ["schema_as_declared", "matches_frames"]
SUMMARY_CHECKS = ["schema_as_declared", "totals_match_hourly"]


def hours_in(window: dg.TimeWindow) -> list[datetime]:
    hours, hour = [], window.start
    while hour < window.end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def days_in(window: dg.TimeWindow) -> list[date]:
    days, day = [], window.start
    while day < window.end:
        days.append(day.date())
        day += timedelta(days=1)
    return days


def check_result(asset: str, name: str, failures: dict, checked: int) -> dg.AssetCheckResult:
    """One check over the run's partitions: failures maps partition → what is wrong."""
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=name,
        passed=not failures,
        metadata={"partitions_checked": checked,
                  "failures": dg.MetadataValue.json({k: v for k, v in list(failures.items())[:20]})},
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "frames",
            description="One row per frame and event-time hour: ids, times, status, error, size, "
                        "quality, object count, model, Kafka position, run id. Deduplicated on frame_id "
                        "(the latest processing wins).",
            deps=[landing_metadata], partitions_def=hourly_partitions, group_name="warehouse",
            automation_condition=on_landing_update, kinds={"parquet"},
        ),
        dg.AssetSpec(
            "detections",
            description="One row per detected object: frame, source, capture time, class, "
                        "confidence, box (x, y, w, h in pixels).",
            deps=[landing_metadata], partitions_def=hourly_partitions, group_name="warehouse",
            automation_condition=on_landing_update, kinds={"parquet"},
        ),
    ],
    check_specs=[dg.AssetCheckSpec(n, asset="frames") for n in FRAMES_CHECKS]
    + [dg.AssetCheckSpec(n, asset="detections") for n in DETECTIONS_CHECKS],
    partitions_def=hourly_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=False,
)
def hourly_tables(context: dg.AssetExecutionContext, storage: StorageResource):
    """Landing metadata of each hour → typed, deduplicated Parquet for frames and detections."""
    store = storage.open()
    hours = hours_in(context.partition_time_window)
    rows = {"frames": 0, "detections": 0}
    failures: dict[tuple[str, str], dict] = {
        **{("frames", n): {} for n in FRAMES_CHECKS}, **{("detections", n): {} for n in DETECTIONS_CHECKS}
    }
    for hour in hours:
        records = wh.landing_records(store, hour)
        latest = wh.latest_per_frame(records)
        for table, build in (("frames", wh.frames_table), ("detections", wh.detections_table)):
            store.put(wh.hourly_key(table, hour), wh.to_parquet(build(latest)))
        # Checks read back what is stored, not what was meant to be written.
        frames = wh.from_parquet(store.get(wh.hourly_key("frames", hour)))
        detections = wh.from_parquet(store.get(wh.hourly_key("detections", hour)))
        rows["frames"] += frames.num_rows
        rows["detections"] += detections.num_rows
        key = hour.strftime("%Y-%m-%d-%H:00")
        if problems := wh.schema_problems(frames, wh.FRAMES_SCHEMA):
            failures["frames", "schema_as_declared"][key] = problems
        if dupes := wh.duplicate_frame_ids(frames):
            failures["frames", "no_duplicate_frame_id"][key] = dupes[:20]
        mismatch = wh.landing_mismatch(frames, records)
        if mismatch["missing"] or mismatch["extra"] or mismatch["rows"] != mismatch["distinct_landed"]:
            failures["frames", "matches_landing"][key] = mismatch
        if problems := wh.schema_problems(detections, wh.DETECTIONS_SCHEMA):
            failures["detections", "schema_as_declared"][key] = problems
        expected = sum(frames.column("object_count").to_pylist())
        if detections.num_rows != expected:
            failures["detections", "matches_frames"][key] = (
                f"{detections.num_rows} rows, frames say {expected}"
            )
    context.log.info(f"{len(hours)} hours: {rows['frames']} frames, {rows['detections']} detections")
    for table in ("frames", "detections"):
        yield dg.MaterializeResult(
            asset_key=table,
            metadata={"rows": dg.MetadataValue.int(rows[table]), "hours": len(hours),
                      "path": dg.MetadataValue.path(store.uri(f"warehouse/{table}"))},
        )
    for (asset, name), failed in failures.items():
        yield check_result(asset, name, failed, len(hours))


@dg.asset(
    partitions_def=daily_partitions,
    deps=["frames", "detections"],
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="warehouse",
    kinds={"duckdb", "parquet"},
    check_specs=[dg.AssetCheckSpec(n, asset="daily_summary") for n in SUMMARY_CHECKS],
)
def daily_summary(context: dg.AssetExecutionContext, storage: StorageResource, duckdb: DuckDBResource):
    """Per day × source × class: frames, objects, mean and max confidence, objects per hour,
    brightness and frame-size distribution, share of dark and errored frames (DuckDB over the
    hourly Parquet)."""
    store = storage.open()
    days = days_in(context.partition_time_window)
    total_rows, failures, preview = 0, {name: {} for name in SUMMARY_CHECKS}, None
    with duckdb.get_connection() as con:
        wh.prepare_connection(con, storage)
        for day in days:
            keys = {
                table: [k for k in store.list(f"warehouse/{table}/dt={day}/") if k.endswith(".parquet")]
                for table in ("frames", "detections")
            }
            paths = {t: [wh.scan_path(storage, k) for k in ks] for t, ks in keys.items()}
            result = con.execute(wh.daily_summary_sql(day, paths["frames"], paths["detections"]))
            table = result.to_arrow_table().cast(wh.DAILY_SUMMARY_SCHEMA)
            store.put(wh.daily_key("daily_summary", day), wh.to_parquet(table))
            stored = wh.from_parquet(store.get(wh.daily_key("daily_summary", day)))
            total_rows += stored.num_rows
            preview = stored if preview is None or stored.num_rows else preview
            if problems := wh.schema_problems(stored, wh.DAILY_SUMMARY_SCHEMA):
                failures["schema_as_declared"][str(day)] = problems
            hourly = {t: wh.concat([wh.from_parquet(store.get(k)) for k in ks], t) for t, ks in keys.items()}
            if problems := wh.summary_mismatch(stored, hourly["frames"], hourly["detections"]):
                failures["totals_match_hourly"][str(day)] = problems
    yield dg.MaterializeResult(metadata={
        "rows": dg.MetadataValue.int(total_rows),
        "days": len(days),
        "preview": dg.MetadataValue.md(wh.markdown_table(preview.drop_columns(["objects_per_hour"]))
                                       if preview is not None else "(empty)"),
    })
    for name in SUMMARY_CHECKS:
        yield check_result("daily_summary", name, failures[name], len(days))


daily_summary_job = dg.define_asset_job(
    "daily_summary_job", selection=[daily_summary], partitions_def=daily_partitions,
)

@dg.schedule(
    job=daily_summary_job, cron_schedule="30 0 * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def daily_summary_schedule(context: dg.ScheduleEvaluationContext):
    """Yesterday's daily_summary, half an hour after midnight UTC (time for late frames)."""
    yesterday = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
    return dg.RunRequest(run_key=yesterday, partition_key=yesterday)

warehouse_automation = dg.AutomationConditionSensorDefinition(
    "warehouse_automation",
    target=dg.AssetSelection.assets("frames", "detections"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
