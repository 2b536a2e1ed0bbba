"""Tracking assets: hourly `tracks` and `object_counts` from the tracked detections.

The tracker itself runs where detections are written (warehouse `hourly_tables`), so every
detection row carries its track id; these tables say what the tracks were and what they did.
Counting depends on the lines and zones file: changing it and backfilling a range re-counts history
in one run, without tracking again.
"""

from datetime import timedelta

import dagster as dg
import pyarrow as pa

from imgpipeline.defs.hours import hour_key, hours_in
from imgpipeline.defs.partitions import hourly_partitions
from imgpipeline.defs.tracking import checks
from imgpipeline.defs.tracking import tables as tt
from imgpipeline.defs.warehouse import checks as wc
from imgpipeline.defs.warehouse import tables as wh
from imgpipeline.resources import StorageResource, TrackingResource

# Like the warehouse's own condition, and without waiting for the next hour: counts of the latest
# hour are made as its detections come, and made again once the next hour's detections exist.
on_detections_update = (
    dg.AutomationCondition.eager()
    .without(dg.AutomationCondition.in_latest_time_window())
    .without(~dg.AutomationCondition.any_deps_missing())
    .with_label("detections updated")
)

# An hour's counts read the hour before (which side of a line a track was on) and the hour after
# (how long a visit begun in the hour lasted).
AROUND = dg.TimeWindowPartitionMapping(
    start_offset=-1, end_offset=1, allow_nonexistent_upstream_partitions=True
)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "tracks",
            description="One row per track (distinct object) per hour: source, track id, class, first "
            "and last seen, frames, max confidence, entry and exit points.",
            deps=["detections"],
            partitions_def=hourly_partitions,
            group_name="tracking",
            automation_condition=on_detections_update,
            kinds={"parquet"},
        ),
        dg.AssetSpec(
            "object_counts",
            description="Per hour × source × class: distinct objects; crossings in and out per line; "
            "visits and dwell (p50, p95, max) per zone; the zones file's sha256 on every row.",
            deps=[
                dg.AssetDep("detections", partition_mapping=AROUND),
                dg.AssetDep("frames", partition_mapping=AROUND),
            ],
            partitions_def=hourly_partitions,
            group_name="tracking",
            automation_condition=on_detections_update,
            kinds={"parquet"},
        ),
    ],
    check_specs=wc.check_specs("tracks", "object_counts", checks=checks.CHECKS),
    partitions_def=hourly_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=False,
)
def tracking_tables(context: dg.AssetExecutionContext, storage: StorageResource, tracking: TrackingResource):
    """Tracked detections of each hour → its tracks, and what they did on the configured lines and zones."""
    store = storage.open()
    zones = tracking.zones()
    hours = hours_in(context.partition_time_window)
    failures = wc.no_failures("tracks", "object_counts", checks=checks.CHECKS)
    totals = {"tracks": 0, "object_counts": 0, "crossings": 0}
    tracks_by_hour: dict = {}  # each hour's stored tracks, read once in the run (the day's id check)
    for hour in hours:
        detections = tt.stored(store, "detections", [hour], tt.DETECTION_COLUMNS)
        store.put(wh.hourly_key("tracks", hour), wh.to_parquet(tt.tracks_table(hour, detections)))
        counts_key = wh.counts_key(hour, zones.sha256)
        store.put(counts_key, wh.to_parquet(tt.object_counts_table(store, hour, zones)))
        # Checks read back what is stored.
        tracks = wh.from_parquet(store.get(wh.hourly_key("tracks", hour)))
        counts = wh.from_parquet(store.get(counts_key))
        tracks_by_hour[hour] = tracks.select(wh.TRACKS_SCHEMA.names)
        day = [hour.replace(hour=0) + timedelta(hours=h) for h in range(24)]
        for other in day:
            if other not in tracks_by_hour:
                tracks_by_hour[other] = tt.stored(store, "tracks", [other], wh.TRACKS_SCHEMA.names)
        day_tracks = pa.concat_tables([tracks_by_hour[h] for h in day])
        checks.check_hour(hour_key(hour), tracks, counts, detections, day_tracks, failures)
        totals["tracks"] += tracks.num_rows
        totals["object_counts"] += counts.num_rows
        totals["crossings"] += sum(
            v or 0 for c in ("crossed_in", "crossed_out") for v in counts.column(c).to_pylist()
        )
    context.log.info(
        f"{len(hours)} hours: {totals['tracks']} track-hours, {totals['crossings']} line crossings "
        f"(zones file {zones.path or 'none'}, sha256 {zones.sha256 or '-'})"
    )
    for table in ("tracks", "object_counts"):
        metadata = {
            "rows": dg.MetadataValue.int(totals[table]),
            "hours": len(hours),
            "path": dg.MetadataValue.path(store.uri(f"warehouse/{table}")),
        }
        if table == "object_counts":
            metadata["zones_sha256"] = zones.sha256 or "(no zones file)"
        yield dg.MaterializeResult(asset_key=table, metadata=metadata)
    yield from wc.check_results(failures, len(hours))
