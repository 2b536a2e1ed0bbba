"""Tracking assets: hourly `tracks` and `object_counts` from the tracked detections.

The tracker itself runs where detections are written (warehouse `hourly_tables`), so every
detection row carries its track id; these tables say what the tracks were and what they did.
Counting depends on the lines and zones file: changing it and backfilling a range re-counts history
in one run, without tracking again.
"""

from datetime import timedelta

import dagster as dg
import pyarrow as pa

from imgpipeline.defs.automation import on_detections_made
from imgpipeline.defs.hours import hour_key, hours_in
from imgpipeline.defs.partitions import AROUND, hourly_partitions
from imgpipeline.defs.tables import DETECTIONS, FRAMES, OBJECT_COUNTS, TRACKED_COLUMNS, TRACKS, counts_part
from imgpipeline.defs.tables.checks import check_results, check_specs, no_failures
from imgpipeline.defs.tracking import checks
from imgpipeline.defs.tracking import rows as tr
from imgpipeline.resources import StorageResource, TrackingResource
from imgpipeline.resources.storage import BadObject, Storage


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            TRACKS.key,
            description="One row per track (distinct object) per hour: source, track id, class, first "
            "and last seen, frames, max confidence, entry and exit points.",
            deps=[DETECTIONS.key],
            partitions_def=hourly_partitions,
            group_name="tracking",
            automation_condition=on_detections_made,
            kinds={"parquet"},
        ),
        dg.AssetSpec(
            OBJECT_COUNTS.key,
            description="Per hour × source × class: distinct objects; crossings in and out per line; "
            "visits and dwell (p50, p95, max) per zone; the zones file's sha256 on every row.",
            deps=[
                dg.AssetDep(DETECTIONS.key, partition_mapping=AROUND),
                dg.AssetDep(FRAMES.key, partition_mapping=AROUND),
            ],
            partitions_def=hourly_partitions,
            group_name="tracking",
            automation_condition=on_detections_made,
            kinds={"parquet"},
        ),
    ],
    check_specs=check_specs(checks.CHECKS, "tracks", "object_counts"),
    partitions_def=hourly_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=False,
)
def tracking_tables(context: dg.AssetExecutionContext, storage: StorageResource, tracking: TrackingResource):
    """Tracked detections of each hour → its tracks, and what they did on the configured lines and zones."""
    store = storage.open()
    zones = tracking.zones()
    hours = hours_in(context.partition_time_window)
    failures = no_failures(checks.CHECKS, "tracks", "object_counts")
    totals = {"tracks": 0, "object_counts": 0, "crossings": 0, "detections_read": 0}
    tracks_by_hour: dict = {}  # each hour's stored tracks, read once in the run (the day's id check)
    for hour in hours:
        detections = DETECTIONS.stored_hour(store, hour)
        made, read = tr.hour_tracks(hour, detections, stored_tracks(store, hour))
        totals["detections_read"] += read
        TRACKS.write(store, TRACKS.hour_key(hour), made)
        detections = detections.select(TRACKED_COLUMNS)
        counts_key = OBJECT_COUNTS.hour_key(hour, counts_part(zones.sha256))
        OBJECT_COUNTS.write(store, counts_key, tr.object_counts_table(store, hour, zones))
        # Checks read back what is stored.
        tracks = TRACKS.read(store, TRACKS.hour_key(hour))
        counts = OBJECT_COUNTS.read(store, counts_key)
        tracks_by_hour[hour] = tracks.select(TRACKS.schema.names)
        day = [hour.replace(hour=0) + timedelta(hours=h) for h in range(24)]
        for other in day:
            if other not in tracks_by_hour:
                tracks_by_hour[other] = TRACKS.stored_hours(store, [other], TRACKS.schema.names)
        day_tracks = pa.concat_tables([tracks_by_hour[h] for h in day])
        checks.check_hour(hour_key(hour), tracks, counts, detections, day_tracks, failures)
        totals["tracks"] += tracks.num_rows
        totals["object_counts"] += counts.num_rows
        totals["crossings"] += sum(
            v or 0 for c in ("crossed_in", "crossed_out") for v in counts.column(c).to_pylist()
        )
    context.log.info(
        f"{len(hours)} hours: {totals['tracks']} track-hours ({totals['detections_read']} detections read "
        f"for them), {totals['crossings']} line crossings "
        f"(zones file {zones.path or 'none'}, sha256 {zones.sha256 or '-'})"
    )
    for table in (TRACKS, OBJECT_COUNTS):
        metadata = {
            "rows": dg.MetadataValue.int(totals[table.name]),
            "hours": len(hours),
            **({"detections_read": totals["detections_read"]} if table is TRACKS else {}),
            "path": dg.MetadataValue.path(store.uri(table.folder.rstrip("/"))),
        }
        if table is OBJECT_COUNTS:
            metadata["zones_sha256"] = zones.sha256 or "(no zones file)"
        yield dg.MaterializeResult(asset_key=table.key, metadata=metadata)
    yield from check_results(failures, len(hours))


def stored_tracks(store: Storage, hour) -> pa.Table | None:
    """The hour's tracks as stored, or None when there are none to add to (not stored, not readable)."""
    try:
        return TRACKS.read(store, TRACKS.hour_key(hour))
    except (BadObject, pa.ArrowInvalid):
        return None
