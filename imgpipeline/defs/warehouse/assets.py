"""Warehouse assets: hourly `frames` and `detections`, daily `daily_summary` (DuckDB).

Each run handles a whole partition range (single-run backfills) and rewrites the files of
every partition in it, so re-materializing gives the same rows in the same order.
"""

from datetime import date

import dagster as dg
import pyarrow as pa
from dagster_duckdb import DuckDBResource

from imgpipeline.defs.hours import days_in, hour_key, hours_in
from imgpipeline.defs.partitions import daily_partitions, hourly_partitions, yesterday_schedule
from imgpipeline.defs.streaming.assets import landing_metadata
from imgpipeline.defs.streaming.landing import hour_records
from imgpipeline.defs.tracking import tracker
from imgpipeline.defs.warehouse import checks, sql
from imgpipeline.defs.warehouse import tables as wh
from imgpipeline.resources import StorageResource, TrackingResource

# Like eager(), but for every hour, not just the latest: late frames re-materialize their hour.
on_landing_update = dg.AutomationCondition.eager().without(
    dg.AutomationCondition.in_latest_time_window()
).with_label("landing updated")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "frames",
            description="One row per frame and event-time hour: ids, times, status, error, size, "
                        "quality, object count, model, Kafka position, run id. Deduplicated on (source_id, "
                        "frame_id): a processed record over an error whatever their order, else the latest. "
                        "A frame captured out of range is a row with status out_of_range in the hour it "
                        "reached the broker.",
            deps=[landing_metadata], partitions_def=hourly_partitions, group_name="warehouse",
            automation_condition=on_landing_update, kinds={"parquet"},
        ),
        dg.AssetSpec(
            "detections",
            description="One row per detected object: frame, source, capture time, class, "
                        "confidence, box (x, y, w, h in pixels), and the track (distinct object) it "
                        "belongs to once the tracker has confirmed it.",
            deps=[landing_metadata], partitions_def=hourly_partitions, group_name="warehouse",
            automation_condition=on_landing_update, kinds={"parquet"},
        ),
    ],
    check_specs=checks.check_specs("frames", "detections"),
    partitions_def=hourly_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=False,
)
def hourly_tables(context: dg.AssetExecutionContext, storage: StorageResource, tracking: TrackingResource):
    """Landing metadata of each hour → typed, deduplicated Parquet for frames and detections, the
    detections tracked (ByteTrack) in capture order from where the previous hour's tracks left off."""
    store = storage.open()
    settings = tracking.settings()
    hours = hours_in(context.partition_time_window)
    rows = {"frames": 0, "detections": 0}
    failures = checks.no_failures("frames", "detections")
    for hour in hours:
        records = hour_records(store, hour)
        latest = wh.latest_per_frame(records)
        track_ids, seed = tracker.track_hour(store, hour, latest, settings)
        store.put(wh.hourly_key("frames", hour), wh.to_parquet(wh.frames_table(latest)))
        store.put(wh.hourly_key("detections", hour),
                  wh.to_parquet(tracker.with_seed(wh.detections_table(latest, track_ids), seed)))
        tracker.clear_mark(store, hour, seed)
        # Checks read back what is stored, not what was meant to be written.
        frames = wh.from_parquet(store.get(wh.hourly_key("frames", hour)))
        detections = wh.from_parquet(store.get(wh.hourly_key("detections", hour)))
        rows["frames"] += frames.num_rows
        rows["detections"] += detections.num_rows
        checks.check_hour(hour_key(hour), frames, detections, records, failures)
    context.log.info(f"{len(hours)} hours: {rows['frames']} frames, {rows['detections']} detections")
    if (stale := tracker.mark_next_if_stale(store, hours[-1])) is not None:
        context.log.info(f"{hour_key(stale)} continued other detections of {hour_key(hours[-1])}: "
                         "retrack_sensor makes it again")
    for table in ("frames", "detections"):
        yield dg.MaterializeResult(
            asset_key=table,
            metadata={"rows": dg.MetadataValue.int(rows[table]), "hours": len(hours),
                      "path": dg.MetadataValue.path(store.uri(f"warehouse/{table}"))},
        )
    yield from checks.check_results(failures, len(hours))


def summarize_day(con, storage: StorageResource, day: date, failures: dict) -> tuple[pa.Table, list[str]]:
    """One day's summary: computed by DuckDB over the hourly Parquet, stored, read back and checked;
    with the keys of that day refused as not of the layout (not read)."""
    store = storage.open()
    files = {table: sql.table_files(storage, table, f"dt={day}/") for table in ("frames", "detections")}
    result = sql.query_daily_summary(con, day, files["frames"].paths, files["detections"].paths)
    table = result.to_arrow_table().cast(wh.DAILY_SUMMARY_SCHEMA)
    store.put(wh.daily_key("daily_summary", day), wh.to_parquet(table))
    stored = wh.from_parquet(store.get(wh.daily_key("daily_summary", day)))
    if problems := checks.schema_problems(stored, wh.DAILY_SUMMARY_SCHEMA):
        failures["daily_summary", "schema_as_declared"][str(day)] = problems
    hourly = {t: wh.concat([wh.from_parquet(store.get(k)) for k in f.keys], t) for t, f in files.items()}
    if problems := checks.summary_mismatch(stored, hourly["frames"], hourly["detections"]):
        failures["daily_summary", "totals_match_hourly"][str(day)] = problems
    return stored, [k for f in files.values() for k in f.refused]


@dg.asset(
    partitions_def=daily_partitions,
    deps=["frames", "detections"],
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="warehouse",
    kinds={"duckdb", "parquet"},
    check_specs=checks.check_specs("daily_summary"),
)
def daily_summary(context: dg.AssetExecutionContext, storage: StorageResource, duckdb: DuckDBResource):
    """Per day × source × class: frames, objects (detections), unique objects (distinct tracks),
    mean and max confidence, objects per hour,
    brightness and frame-size distribution, share of dark and errored frames (DuckDB over the
    hourly Parquet)."""
    days = days_in(context.partition_time_window)
    total_rows, failures, preview, refused = 0, checks.no_failures("daily_summary"), None, []
    with duckdb.get_connection() as con:
        sql.prepare_connection(con, storage)
        for day in days:
            stored, refused_keys = summarize_day(con, storage, day, failures)
            total_rows += stored.num_rows
            preview = stored if preview is None or stored.num_rows else preview
            refused += refused_keys
    if refused:
        context.log.warning(sql.refused_message(refused))
    yield dg.MaterializeResult(metadata={
        "rows": dg.MetadataValue.int(total_rows),
        "days": len(days),
        "refused_keys": dg.MetadataValue.int(len(refused)),
        "preview": dg.MetadataValue.md(sql.markdown_table(preview.drop_columns(["objects_per_hour"]))
                                       if preview is not None else "(empty)"),
    })
    yield from checks.check_results(failures, len(days))


daily_summary_job = dg.define_asset_job(
    "daily_summary_job", selection=[daily_summary], partitions_def=daily_partitions,
)


daily_summary_schedule = yesterday_schedule(
    "daily_summary_schedule", daily_summary_job, "30 0 * * *",
    "Yesterday's daily_summary, half an hour after midnight UTC (time for late frames).")


hourly_tables_job = dg.define_asset_job(
    "hourly_tables_job", selection=["frames", "detections"], partitions_def=hourly_partitions,
)


@dg.sensor(
    job=hourly_tables_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
    description="Makes again each hour whose tracks continued detections of the hour before that have "
                "since changed (late frames), one hour after another until they come out the same.",
)
def retrack_sensor(context: dg.SensorEvaluationContext, storage: StorageResource):
    store = storage.open()
    busy = hours_in_progress(context.instance)
    requests = []
    for hour, seed in tracker.marked_hours(store):
        key = hour_key(hour)
        if not hourly_partitions.has_partition_key(key):
            context.log.warning(f"{tracker.retrack_key(hour)}: {key} is not an hourly partition; left alone")
        elif tracker.is_current(store, hour, seed):
            tracker.clear_mark(store, hour, seed)  # made meanwhile from the right hour
        elif key not in busy:
            # No run key: a failed run leaves the mark, and the next tick asks again.
            requests.append(dg.RunRequest(partition_key=key, tags={"imgpipeline/retrack": seed[:16]}))
    return dg.SensorResult(run_requests=requests, skip_reason=None if requests else "no hour to track again")


def hours_in_progress(instance) -> set[str]:
    """Hourly partition keys that a queued or running run of the hourly tables will make."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[
        dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED]))
    busy = set()
    for run in runs:
        if run.asset_selection is not None and dg.AssetKey("detections") not in run.asset_selection:
            continue
        tags = run.tags
        first = tags.get("dagster/asset_partition_range_start") or tags.get("dagster/partition")
        last = tags.get("dagster/asset_partition_range_end") or first
        if first and len(first) == len("2026-01-01-00:00"):  # an hourly key, not a day's
            busy.update(hourly_partitions.get_partition_keys_in_range(dg.PartitionKeyRange(first, last)))
    return busy


warehouse_automation = dg.AutomationConditionSensorDefinition(
    "warehouse_automation",
    target=dg.AssetSelection.assets("frames", "detections"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
