"""Warehouse assets: hourly `frames`, `detections` and `class_hours`, daily `daily_summary` (DuckDB).

Each run handles a whole partition range (single-run backfills) and rewrites the files of
every partition in it, so re-materializing gives the same rows in the same order.
"""

from datetime import date, datetime, timedelta

import dagster as dg
import pyarrow as pa
from dagster_duckdb import DuckDBResource

from imgpipeline.defs.automation import AutomationPolicy, automation_sensor, on_landing_update, yielding_tags
from imgpipeline.defs.hours import days_in, hour_key, hours_in
from imgpipeline.defs.partitions import daily_partitions, hourly_partitions, yesterday_schedule
from imgpipeline.defs.records.reader import landing_versions, read_records
from imgpipeline.defs.records.retired import is_retired
from imgpipeline.defs.tables import (
    CLASS_HOURS,
    DAILY_SUMMARY,
    DETECTIONS,
    FRAMES,
    LANDING_ASSET,
    TABLES,
    views,
)
from imgpipeline.defs.tables.checks import check_results, check_specs, no_failures, schema_problems
from imgpipeline.defs.ticks import bound, tick_instance
from imgpipeline.defs.warehouse import builds, checks, sql, tracked
from imgpipeline.lib.run_priority import RunPriority
from imgpipeline.resources import StorageResource, TrackingResource
from imgpipeline.resources.storage import BadObject, Storage

# While frames land, the automation builds their hours within half a minute or so: no build for 10
# minutes warns, for 30 fails (the automation, its runs or the daemon stopped, or the frames did, which
# landing_metadata's own freshness says first). The daily summary is made at 00:30 UTC for the day before:
# not made since midnight by 02:00 fails. The daemon evaluates both every 30 s (dagster.yaml: freshness).
HOURLY_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=30),
                                                  warn_window=timedelta(minutes=10))
DAILY_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0 2 * * *", lower_bound_delta=timedelta(hours=2))


def hourly_spec(table, description: str) -> dg.AssetSpec:
    """An hourly table the landing makes, kept up by the warehouse's automation."""
    return dg.AssetSpec(table.key, description=description, deps=[LANDING_ASSET],
                        partitions_def=hourly_partitions, group_name="warehouse",
                        automation_condition=on_landing_update, kinds={"parquet"},
                        freshness_policy=HOURLY_FRESHNESS)


def stale(context, marked: datetime | None) -> None:
    """Say in the run's log that retrack_sensor will make `marked` again, if an hour was marked."""
    if marked is not None:
        context.log.info(f"{hour_key(marked)} continued other detections of "
                         f"{hour_key(marked - timedelta(hours=1))}: retrack_sensor makes it again")


@dg.multi_asset(
    specs=[
        hourly_spec(FRAMES,
                    "One row per frame and event-time hour: ids, times, status, error, size, quality, "
                    "object count, model, Kafka position, run id. Deduplicated on (source_id, frame_id): "
                    "a processed record over an error whatever their order, else the latest. A frame "
                    "captured out of range is a row with status out_of_range in the hour it reached the "
                    "broker."),
        hourly_spec(DETECTIONS,
                    "One row per detected object: frame, source, capture time, class, confidence, box (x, "
                    "y, w, h in pixels), and the track (distinct object) it belongs to once the tracker "
                    "has confirmed it."),
        hourly_spec(CLASS_HOURS,
                    "Per hour of capture × source × detector identity × class: frames with the class, "
                    "detections, their confidence sum and max, and the distinct track ids; made with the "
                    "hour's detections and stamped with their build, for the daily summary to sum."),
    ],
    check_specs=check_specs(checks.CHECKS, "frames", "detections"),
    partitions_def=hourly_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=False,
)
def hourly_tables(context: dg.AssetExecutionContext, storage: StorageResource, tracking: TrackingResource):
    """Landing metadata of each hour → typed, deduplicated Parquet for frames and detections, the
    detections tracked (SORT by default) in capture order from where the previous hour's tracks left
    off. A run of one hour adds only the landing files new since its last build (`builds.py`)."""
    store = storage.open()
    settings = tracking.settings()
    hours = hours_in(context.partition_time_window)
    counted = {"frames": 0, "detections": 0, "class_hours": 0, "extended": 0}
    failures = no_failures(checks.CHECKS, "frames", "detections")
    retired = []
    for hour in hours:
        made = make_hour(store, hour, settings, extend=len(hours) == 1 and not context.run.tags.get(WHOLE))
        if made is None:
            retired.append(hour)  # its tables stay as they were built
            tracked.unmark(store, hour)  # no run can make it again
            continue
        written = bool(made.whole or made.added)
        if written:
            builds.write_tables(store, hour, made)
        tracked.clear_mark(store, hour, made.seed)
        if hour == hours[0] and made.whole:
            # It continued the hour before as it was when read: another run may have written it since.
            stale(context, tracked.mark_if_stale(store, hour))
        context.log.info(f"{hour_key(hour)}: " + (f"made whole from {made.added} landing files ({made.whole})"
                                                  if made.whole else f"{made.added} new landing files added"))
        counted["extended"] += made.whole is None
        # Checks read back what is stored, not what was meant to be written.
        frames = FRAMES.read(store, FRAMES.hour_key(hour))
        detections = DETECTIONS.read(store, DETECTIONS.hour_key(hour))
        counted["frames"] += frames.num_rows
        counted["detections"] += detections.num_rows
        if store.exists(made_key := CLASS_HOURS.hour_key(hour)):
            counted["class_hours"] += CLASS_HOURS.read(store, made_key).num_rows
        landed = made.against_landing(frames, detections)
        checks.check_hour(hour_key(hour), frames, detections, landed, failures)
        passed = not any(hour_key(hour) in found for check, found in failures.items()
                         if check not in checks.WARNINGS)
        if written or made.build.passed != passed:
            made.build.checked(passed).write(store, hour)  # after its tables: a build cut short has none
    context.log.info(f"{len(hours)} hours: {counted['frames']} frames, {counted['detections']} detections")
    if retired:
        context.log.warning(f"{len(retired)} hours ({hour_key(retired[0])} … {hour_key(retired[-1])}) are of "
                            "days whose landing retention deleted: their tables stay as they were built")
    # The hour after the range continued this run's last hour as it was before.
    stale(context, tracked.mark_if_stale(store, hours[-1] + timedelta(hours=1)))
    for table in builds.HOURLY:
        yield dg.MaterializeResult(
            asset_key=table.key,
            metadata={"rows": dg.MetadataValue.int(counted[table.name]), "hours": len(hours),
                      "hours_kept_as_built": len(retired), "hours_extended": counted["extended"],
                      "path": dg.MetadataValue.path(store.uri(table.folder.rstrip("/")))},
        )
    yield from check_results(failures, len(hours), checks.WARNINGS)


# A run tag that makes every hour of the run whole from its landing, as a backfill does.
WHOLE = "imgpipeline/whole"


def make_hour(store: Storage, hour, settings, extend: bool) -> builds.Made | None:
    """The hour's tables extended by its new landing files when `extend` and it can be, else made whole
    from all of its landing; None when retention retired its day's landing."""
    if is_retired(store, hour.date()):
        return None
    why = "a run of several hours or asked whole"
    if extend:
        try:
            found = builds.extend(store, hour, settings)
        except BadObject:
            found = "a landing file went while it was read"
        if isinstance(found, builds.Made):
            return found
        why = found
    if (landing := landing_of(store, hour)) is None:
        return None
    return builds.whole(store, hour, *landing, settings, why)


def landing_of(store: Storage, hour, attempts: int = 3) -> tuple[dict[str, str], list] | None:
    """The hour's landing files (with their versions) and records, or None when retention retired its
    day's landing. Retention marks a day before it deletes anything of it: a day still unmarked after
    the read was read whole. A file gone while it was read otherwise was compacted: the hour is listed
    and read again."""
    for _ in range(attempts):
        if is_retired(store, hour.date()):
            return None
        listing = landing_versions(store, hour)
        try:
            records = [record for key in listing for record in read_records(store, key)]
        except BadObject:
            continue  # retention's, or compaction's: the mark says which
        # Retention may have marked and emptied the day since the look above: the listing would be short.
        return None if is_retired(store, hour.date()) else (listing, records)
    if is_retired(store, hour.date()):
        return None
    raise dg.Failure(f"{hour_key(hour)}: landing files went while they were read, {attempts} times")


def summarize_day(con, storage: StorageResource, day: date, failures: dict,
                  read: dict[str, int]) -> tuple[pa.Table, list[str]]:
    """One day's summary: computed by DuckDB over the hourly Parquet, stored, read back and checked;
    with the keys of that day refused as not of the layout (not read). `read` counts the hours summed
    from class_hours and those read from their detections."""
    store = storage.open()
    files = {table: views.table_files(storage, table, f"dt={day}/")
             for table in ("frames", "detections", "class_hours")}
    hours = {t: {k.removeprefix(TABLES[t].folder): p for k, p in zip(f.keys, f.paths, strict=True)}
             for t, f in files.items()}
    made, raw = sql.summary_sources(con, hours["detections"], hours["class_hours"])
    read["class_hours"] += len(made)
    read["detections"] += len(raw)
    result = sql.query_daily_summary(con, day, files["frames"].paths, raw, made)
    table = result.to_arrow_table().cast(DAILY_SUMMARY.schema)
    DAILY_SUMMARY.write(store, DAILY_SUMMARY.day_key(day), table)
    stored = DAILY_SUMMARY.read(store, DAILY_SUMMARY.day_key(day))
    if problems := schema_problems(stored, DAILY_SUMMARY.schema):
        failures["daily_summary", "schema_as_declared"][str(day)] = problems
    frames = FRAMES.concat([FRAMES.read(store, k) for k in files["frames"].keys])
    # The detections' rows counted from their files' footers: the check reads no detection again.
    if problems := checks.summary_mismatch(stored, frames, sql.rows_in(con, files["detections"].paths)):
        failures["daily_summary", "totals_match_hourly"][str(day)] = problems
    return stored, [k for f in files.values() for k in f.refused]


@dg.asset(
    key=DAILY_SUMMARY.key,
    partitions_def=daily_partitions,
    deps=[FRAMES.key, DETECTIONS.key, CLASS_HOURS.key],
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="warehouse",
    kinds={"duckdb", "parquet"},
    check_specs=check_specs(checks.CHECKS, "daily_summary"),
    freshness_policy=DAILY_FRESHNESS,
)
def daily_summary(context: dg.AssetExecutionContext, storage: StorageResource, duckdb: DuckDBResource):
    """Per day × source × class: frames, objects (detections), unique objects (distinct tracks),
    mean and max confidence, objects per hour,
    brightness and frame-size distribution, share of dark and errored frames (DuckDB over the
    hourly Parquet)."""
    days = days_in(context.partition_time_window)
    total_rows, failures, preview, refused = 0, no_failures(checks.CHECKS, "daily_summary"), None, []
    read = {"class_hours": 0, "detections": 0}
    with duckdb.get_connection() as con:
        views.prepare_connection(con, storage)
        for day in days:
            stored, refused_keys = summarize_day(con, storage, day, failures, read)
            total_rows += stored.num_rows
            preview = stored if preview is None or stored.num_rows else preview
            refused += refused_keys
    if refused:
        context.log.warning(views.refused_message(refused))
    if read["detections"]:
        context.log.info(f"{read['detections']} hours read from their detections (their class_hours missing, "
                         "of another build or of another version of the code; a backfill of "
                         f"frames,detections,class_hours over them makes it), {read['class_hours']} summed "
                         "from class_hours")
    yield dg.MaterializeResult(metadata={
        "rows": dg.MetadataValue.int(total_rows),
        "days": len(days),
        "hours_from_class_hours": dg.MetadataValue.int(read["class_hours"]),
        "hours_from_detections": dg.MetadataValue.int(read["detections"]),
        "refused_keys": dg.MetadataValue.int(len(refused)),
        "preview": dg.MetadataValue.md(sql.markdown_table(preview.drop_columns(["objects_per_hour"]))
                                       if preview is not None else "(empty)"),
    })
    yield from check_results(failures, len(days))


daily_summary_job = dg.define_asset_job(
    "daily_summary_job", selection=[daily_summary], partitions_def=daily_partitions,
)


daily_summary_schedule = yesterday_schedule(
    "daily_summary_schedule", daily_summary_job, "30 0 * * *",
    "Yesterday's daily_summary, half an hour after midnight UTC (time for late frames).")


hourly_tables_job = dg.define_asset_job(
    "hourly_tables_job", selection=[FRAMES.key, DETECTIONS.key, CLASS_HOURS.key],
    partitions_def=hourly_partitions,
)


def build_retrack_sensor(priority: RunPriority) -> dg.SensorDefinition:
    """The sensor that makes hours again whose tracks changed; its runs yield the CPU to detection."""

    @dg.sensor(
        name="retrack_sensor", job=hourly_tables_job, minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Makes again each hour whose tracks continued detections of the hour before that have "
                    "since changed (late frames), one hour after another until they come out the same.",
    )
    def retrack_sensor(context: dg.SensorEvaluationContext):
        return retrack_tick(context, yielding_tags(priority))

    return retrack_sensor


def retrack_tick(context: dg.SensorEvaluationContext, tags: dict[str, str]) -> dg.SensorResult:
    """One evaluation of the retrack sensor: a run for each marked hour no run is making (`tags` on each)."""
    store = bound(context, "storage").open()
    busy = hours_in_progress(tick_instance(context))
    requests = []
    for hour, seed in tracked.marked_hours(store):
        key = hour_key(hour)
        if not hourly_partitions.has_partition_key(key):
            context.log.warning(f"{tracked.retrack_key(hour)}: {key} is not an hourly partition; left alone")
        elif is_retired(store, hour.date()):
            tracked.unmark(store, hour)
            context.log.info(f"{key}: its day's landing was retired, its tables are kept as built: unmarked")
        elif tracked.continues(store, hour):
            tracked.clear_mark(store, hour, seed)  # made meanwhile from the hour before as it is now
        elif key not in busy:
            # No run key: a failed run leaves the mark, and the next tick asks again.
            requests.append(dg.RunRequest(partition_key=key, tags={"imgpipeline/retrack": seed[:16], **tags}))
    return dg.SensorResult(run_requests=requests, skip_reason=None if requests else "no hour to track again")


def hours_in_progress(instance) -> set[str]:
    """Hourly partition keys that a queued or running run of the hourly tables will make."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[
        dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED]))
    busy = set()
    for run in runs:
        if run.asset_selection is not None and DETECTIONS.key not in run.asset_selection:
            continue
        tags = run.tags
        first = tags.get("dagster/asset_partition_range_start") or tags.get("dagster/partition")
        last = tags.get("dagster/asset_partition_range_end") or first
        if first and len(first) == len("2026-01-01-00:00"):  # an hourly key, not a day's
            busy.update(hourly_partitions.get_partition_keys_in_range(dg.PartitionKeyRange(first, last)))
    return busy


def warehouse_automation(automation: AutomationPolicy, priority: RunPriority) -> dg.SensorDefinition:
    return automation_sensor("warehouse_automation", FRAMES.key, DETECTIONS.key, CLASS_HOURS.key,
                             policy=automation, priority=priority)
