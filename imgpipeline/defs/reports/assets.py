"""daily_report: one self-contained HTML file per day, for people who do not run the viewer.

The same templates and charts as the viewer's pages (imgpipeline/web), with the day's alerts and their
images inlined, so the file opens anywhere: from the Dagster UI (its materialization links it), a mail
attachment or a shared folder.
"""

import base64

import dagster as dg

from imgpipeline.defs.hours import days_in
from imgpipeline.defs.partitions import daily_partitions, yesterday_schedule
from imgpipeline.defs.tables import ALERTS, DAILY_SUMMARY, OBJECT_COUNTS, REPORT_ASSET
from imgpipeline.defs.tables.views import connect
from imgpipeline.resources import AlertsResource, StorageResource, TrackingResource
from imgpipeline.resources.storage import BadObject, Storage
from imgpipeline.vision import drawing
from imgpipeline.vision.quality import UndecodableImage, decode_image, encode_jpeg
from imgpipeline.web import queries, render
from imgpipeline.web.render import report_key


def alert_images(store: Storage, alerts: list[dict], max_bytes: int, width: int = 160) -> dict[int, str]:
    """Each alert's crop (else its annotated frame) as a small JPEG data: URI."""
    found = {}
    for alert in alerts:
        key = alert["crop_key"] or alert["annotated_key"]
        if not key:
            continue
        try:
            image = drawing.thumbnail(decode_image(store.get(key, max_bytes=max_bytes)), width)
        except (BadObject, UndecodableImage):
            continue
        found[alert["number"]] = "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(image, 80)).decode()
    return found


@dg.asset(
    key=REPORT_ASSET,
    description="One self-contained HTML file per day: objects per hour and source, line crossings, the "
    "day's alerts with their images (and links to their clips), image sizes, processing hours, brightness "
    "and the operations figures. Its materialization links the file and the viewer's copy.",
    deps=[DAILY_SUMMARY.key, ALERTS.key, OBJECT_COUNTS.key],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="alerts",
    kinds={"html"},
)
def daily_report(context: dg.AssetExecutionContext, storage: StorageResource, tracking: TrackingResource,
                 alert_rules: AlertsResource):
    """The day's report, written under reports/daily/."""
    store = storage.open()
    days = days_in(context.partition_time_window)
    con = connect(storage, report=context.log.warning, days=days)  # those days' files only
    sizes, alert_count = {}, 0
    for day in days:
        day_alerts = queries.alerts(con, day)
        clips = frozenset(a["number"] for a in day_alerts if queries.stored_clip(store, a))
        html = render.report(con, day, tracking.zones().sha256,
                             alert_images(store, day_alerts, storage.max_frame_bytes), alert_rules.viewer_url,
                             clips)
        store.put(report_key(day), html.encode())
        sizes[day] = len(html.encode())
        alert_count += len(day_alerts)
    last = max(sizes)
    context.log.info(f"{len(sizes)} reports, {sum(sizes.values()):,} bytes, {alert_count} alerts")
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.path(store.uri(report_key(last))),
        "open_in_viewer": dg.MetadataValue.url(f"{alert_rules.viewer_url}/reports/{last.isoformat()}"),
        "bytes": dg.MetadataValue.int(sizes[last]),
        "alerts": dg.MetadataValue.int(alert_count),
        "days": len(sizes),
    })


daily_report_job = dg.define_asset_job(
    "daily_report_job", selection=[daily_report], partitions_def=daily_partitions,
)


daily_report_schedule = yesterday_schedule(
    "daily_report_schedule", daily_report_job, "45 0 * * *",
    "Yesterday's report, after yesterday's daily_summary (00:30 UTC).")
