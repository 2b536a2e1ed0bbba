"""The alerts asset: each hour's alerts from its frames, detections and tracks, numbered and sent out.

Rules (`alerts.yaml`) are evaluated over the hour with the hour before it as history and the hour after
it for silences; the same frames give the same alerts, the ledger the same numbers, so making an hour
again, replaying its frames or backfilling a range raises and sends nothing twice.
"""

import dagster as dg

from imgpipeline.defs.alerts import checks, mqtt_out, notify
from imgpipeline.defs.alerts import rows as at
from imgpipeline.defs.alerts.clips import make_clips, window_rows
from imgpipeline.defs.alerts.ledger import Ledger
from imgpipeline.defs.automation import on_detections_update
from imgpipeline.defs.hours import hour_key, hours_in
from imgpipeline.defs.partitions import AROUND, hourly_partitions
from imgpipeline.defs.tables import ALERTS, DETECTIONS, FRAMES, TRACKED_COLUMNS
from imgpipeline.defs.tables.checks import check_results, check_specs, no_failures
from imgpipeline.resources import AlertsResource, KafkaResource, StorageResource, TrackingResource
from imgpipeline.resources.mqtt import MqttSettings
from imgpipeline.resources.storage import Storage
from imgpipeline.vision.evaluator import evaluate


@dg.asset(
    key=ALERTS.key,
    description="One row per alert, in the hour it fired: a number that is stable and never reused, the "
    "rule and severity, what it is about (source, frames, track, class) and its evidence (annotated image "
    "and crop under annotated/, and a clip of the seconds around it from a video or camera). Published "
    "to Kafka `alerts` and the rules' webhooks, once each.",
    deps=[dg.AssetDep(table.key, partition_mapping=AROUND) for table in (DETECTIONS, FRAMES)],
    partitions_def=hourly_partitions,
    group_name="alerts",
    automation_condition=on_detections_update,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=check_specs(checks.CHECKS, "alerts"),
    kinds={"parquet", "kafka"},
    pool="alerts",  # one run at a time (dagster.yaml)
)
def alerts(context: dg.AssetExecutionContext, storage: StorageResource, kafka: KafkaResource,
           mqtt: MqttSettings, tracking: TrackingResource, alert_rules: AlertsResource):
    """Alerts of each hour in the range: evaluated, numbered, their evidence drawn, stored, then sent."""
    store = storage.open()
    rules, zones = alert_rules.rules(), tracking.zones()
    ledger, links = Ledger(store), alert_rules.links()
    hours = hours_in(context.partition_time_window)
    failures = no_failures(checks.CHECKS, "alerts")
    totals = {"alerts": 0, "clips": 0, "kafka": 0, "mqtt": 0, "delivered": 0, "dead": 0, "retrying": 0}
    for hour in hours:
        frames = FRAMES.stored_hours(store, at.around(hour), [*at.FRAME_COLUMNS, "processed_at"])
        detections = DETECTIONS.stored_hours(store, at.around(hour), TRACKED_COLUMNS)
        per_source = at.event_frames(frames, detections)
        fired = evaluate(rules, per_source, zones, hour.timestamp(), hour.timestamp() + 3600)
        numbers = [ledger.number(event.key, event.occurrence) for event in fired]
        evidence = draw_all(store, fired, numbers, frames, per_source, storage.max_frame_bytes)
        table = at.alert_rows(hour, fired, numbers, rules, evidence)
        ALERTS.write(store, ALERTS.hour_key(hour), table)
        stored = ALERTS.read(store, ALERTS.hour_key(hour))
        drawable = {(f["source_id"], f["frame_id"]) for f in frames.select(at.FRAME_COLUMNS).to_pylist()
                    if f["status"] in at.DRAWN and f["uri"]}
        checks.check_hour(hour_key(hour), stored, ledger, store, drawable, failures,
                          {e.key: e.occurrence for e in fired})
        messages = [notify.payload(row, alert_rules.viewer_url, store, links) for row in stored.to_pylist()]
        totals["kafka"] += notify.publish(kafka, ledger, messages)
        totals["mqtt"] += mqtt_out.publish_alerts(mqtt, ledger, messages, context.log.warning)
        sent = notify.notify_webhooks(kafka, ledger, rules, messages, alert_rules.token, store=store)
        totals["delivered"] += sent["delivered"]
        totals["dead"] += sent["dead"]
        totals["alerts"] += stored.num_rows
        # Clips after the notifications: encoding the seconds around each alert never holds one up.
        totals["clips"] += len(make_clips(store, fired, evidence, window_rows(frames, fired), per_source,
                                          storage.max_frame_bytes))
    # Refused sends of any hour whose pause is over: an outage delays an alert, it does not drop it.
    retried, _ = notify.retry_webhooks(kafka, ledger, rules, alert_rules.token, store=store)
    totals["delivered"] += retried["delivered"]
    totals["dead"] += retried["dead"]
    totals["retrying"] = retried["retrying"]  # every refused send still waiting, of any hour
    context.log.info(
        f"{len(hours)} hours: {totals['alerts']} alerts, {totals['clips']} with a clip; newly sent: "
        f"{totals['kafka']} to Kafka "
        f"{kafka.alerts_topic}, {totals['delivered']} to webhooks, {totals['dead']} dead-lettered, "
        f"{totals['retrying']} waiting to be tried again "
        f"(rules {rules.path or 'none'}, sha256 {(rules.sha256 or '-')[:12]})"
    )
    yield dg.MaterializeResult(metadata={
        "alerts": dg.MetadataValue.int(totals["alerts"]), "hours": len(hours), "clips": totals["clips"],
        "sent_to_kafka": totals["kafka"], "sent_to_mqtt": totals["mqtt"],
        "webhook_deliveries": totals["delivered"],
        "dead_lettered": totals["dead"], "webhook_sends_waiting": totals["retrying"],
        "rules_sha256": rules.sha256 or "(no rules file)",
        "path": dg.MetadataValue.path(store.uri(ALERTS.folder.rstrip("/"))),
        "viewer": dg.MetadataValue.url(f"{alert_rules.viewer_url}/alerts"),
    })
    yield from check_results(failures, len(hours))


def draw_all(store: Storage, fired, numbers, frames, per_source, max_bytes: int) -> dict:
    """Evidence per alert key: each alert's frame drawn with its detections."""
    wanted = {(e.source_id, e.frame_id) for e in fired}
    rows = {(f["source_id"], f["frame_id"]): f for f in frames.select(at.FRAME_COLUMNS).to_pylist()
            if (f["source_id"], f["frame_id"]) in wanted}
    seen = {(s, f.frame_id): f.seen for s, fs in per_source.items() for f in fs if (s, f.frame_id) in wanted}
    return {e.key: at.draw_evidence(store, e, n, rows.get((e.source_id, e.frame_id)),
                                    seen.get((e.source_id, e.frame_id), []), max_bytes)
            for e, n in zip(fired, numbers, strict=True)}
