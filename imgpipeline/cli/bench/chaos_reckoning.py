"""What `imgpipeline bench chaos` counts once its cameras stopped: it waits until every frame sent landed,
every offset of the frames topic is in the range ledger, each hour's tables and alerts were made after
the last frame was processed and every alert of the tables reached Kafka and the webhook; then it
compares the frames sent with the rows, the topic's offsets with the landing and the ledger, each hour's
rows with its landing, and the alerts of the tables with the alerts topic and the webhook, counting what
came twice as well as what is missing."""

from __future__ import annotations

import json
import time
from collections import Counter

from imgpipeline.cli.bench.latency import made_after
from imgpipeline.resources.storage import Storage

READ_S = 120  # at most this long to read a topic to its end
# Between two looks at whether all settled: each reads every landing record, the ledger, the instance and
# the alerts topic (on a busy machine a second or more of CPU), so the settle time is known to this.
POLL_S = 10


def read_topic(kafka, topic: str) -> list:
    """Every record of the topic, read to the end offsets it had when asked."""
    from kafka import TopicPartition

    consumer = kafka.consumer(group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(tps)
        found, deadline = [], time.monotonic() + READ_S
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise SystemExit(f"bench chaos: {topic} not read to its end within {READ_S} s")
            for records in consumer.poll(timeout_ms=1000).values():
                found += records
        return found
    finally:
        consumer.close()


def topic_messages(kafka) -> dict[tuple[int, int], str | None]:
    """Every message of the frames topic: (partition, offset) → its frame id (None: not a frame)."""
    from imgpipeline.ingest.messages import BadInput, parse_message

    found: dict[tuple[int, int], str | None] = {}
    for r in read_topic(kafka, kafka.frames_topic):
        try:
            found[r.partition, r.offset] = parse_message(r.value, r.headers)[0].frame_id
        except BadInput:
            found[r.partition, r.offset] = None
    return found


def ledger_holes(chaos, instance) -> int:
    """Offsets of the frames topic, from each partition's beginning to its end, in no range of the
    ledger: what no run has accounted for (the sensor's generation from `dagster dev`'s instance)."""
    from kafka import TopicPartition

    from imgpipeline.defs.records.ledger import accounted_ranges, holes
    from imgpipeline.defs.streaming.reconcile import sensor_cursor

    generation = sensor_cursor(instance).get("generation", 0)
    consumer = chaos.kafka.consumer(group_id=None)
    try:
        topic = chaos.kafka.frames_topic
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends, beginnings = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
    finally:
        consumer.close()
    store = chaos.storage.open()
    return sum(end - start for tp in tps for start, end in holes(
        accounted_ranges(store, topic, tp.partition, generation), beginnings[tp], ends[tp]))


def delivered(chaos, hook, records) -> bool:
    """Every alert of the tables of the records' hours on the alerts topic and at the webhook."""
    numbers = table_numbers(chaos, records)
    on_kafka = {json.loads(r.value)["number"] for r in read_topic(chaos.kafka, chaos.kafka.alerts_topic)}
    return set(numbers) <= on_kafka and set(numbers) <= set(hook.delivered())


def table_numbers(chaos, records) -> Counter:
    from imgpipeline.defs.tables import ALERTS

    hours = sorted({r.event_hour for r in records})
    return Counter(ALERTS.stored_hours(chaos.storage.open(), hours, ["number"]).column("number").to_pylist())


def settled_now(chaos, instance, hook, sent: set, records: list) -> str | None:
    """What is still to come (None: nothing): frames to land, offsets to account for, each hour's tables
    and alerts to make after its last frame was processed, alerts to deliver."""
    from imgpipeline.ingest.messages import parse_time

    if missing := len(sent - {r.identity for r in records if r.processed}):
        return f"{missing} frames sent have not landed yet"
    if unaccounted := ledger_holes(chaos, instance):
        return f"{unaccounted} offsets of the topic are in no range of the ledger yet"
    last: dict[str, float] = {}  # each hour's: an hour the cameras left is made no more
    for r in records:
        if r.processed_at:
            hour = r.event_hour.strftime("%Y-%m-%d-%H:00")
            last[hour] = max(last.get(hour, 0.0), parse_time(r.processed_at).timestamp())
    if not all(made_after(instance, [hour], at) for hour, at in sorted(last.items())):
        return "the hours' tables and alerts are not made after their last frame yet"
    if not delivered(chaos, hook, records):
        return "alerts of the tables are not all on Kafka and at the webhook yet"
    return None


def wait_settled(chaos, instance, cameras, hook, settle_s: float) -> tuple[bool, list]:
    """Until nothing is still to come (settled_now), at most settle_s; the landing records."""
    from imgpipeline.defs.records.reader import Landing

    landing = Landing(chaos.storage.open())
    sent = {(c.source, f) for c in cameras for f in c.sent}
    started = time.monotonic()
    said, waiting, records = started, "", []
    while time.monotonic() < started + settle_s:
        records = landing.records()
        if (waiting := settled_now(chaos, instance, hook, sent, records)) is None:
            return True, records
        if time.monotonic() - said >= 60:
            said = time.monotonic()
            print(f"  {said - started:.0f} s: {waiting}", flush=True)
        time.sleep(POLL_S)
    print(f"  not settled within {settle_s:g} s: {waiting}; see {chaos.local.dagster.logfile}")
    for line in in_flight(instance, records):
        print(f"    {line}")
    return False, records


def in_flight(instance, records) -> list[str]:
    """What the instance still has going (runs not finished, backfills not done) and when each hour's
    detections and alerts were last made: where a wait that gave up was stuck."""
    import dagster as dg

    from imgpipeline.defs.tables import ALERTS, DETECTIONS

    now = time.time()
    done = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
    lines = [f"run {r.dagster_run.run_id[:8]} {r.dagster_run.job_name} {r.dagster_run.status.value} "
             f"{now - r.create_timestamp.timestamp():.0f} s old "
             f"{ {k: v for k, v in r.dagster_run.tags.items() if k.startswith('dagster/')} }"
             for r in instance.get_run_records(dg.RunsFilter(
                 statuses=[s for s in dg.DagsterRunStatus if s not in done]))]
    for r in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]), limit=10):
        failures = instance.all_logs(r.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        error = failures[0].dagster_event.event_specific_data.error if failures else None
        while error is not None and error.cause is not None:  # what the step itself raised
            error = error.cause
        lines.append(f"failed run {r.dagster_run.run_id[:8]} {r.dagster_run.job_name} "
                     f"{r.dagster_run.tags.get('dagster/partition', '')} "
                     f"{now - r.create_timestamp.timestamp():.0f} s old: "
                     + (error.message.strip().splitlines()[-1][:300] if error else "(no step failed)"))
    lines += [f"backfill {b.backfill_id} {b.status.value} {now - b.backfill_timestamp:.0f} s old"
              for b in instance.get_backfills(limit=100) if b.status.value in ("REQUESTED", "CANCELING")]
    for hour in sorted({r.event_hour.strftime("%Y-%m-%d-%H:00") for r in records}):
        for key in (DETECTIONS.key, ALERTS.key):
            made = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[hour]), limit=1).records
            lines.append(f"{key.to_user_string()} {hour}: last made "
                         + (f"{now - made[0].timestamp:.0f} s ago" if made else "never"))
    return lines or ["nothing in flight"]


def frame_counts(store: Storage, cameras, records) -> tuple[dict, dict]:
    """The frames sent against the rows of their hours' `frames` (by status) and the frames detected from
    two messages; each hour's rows against its landing."""
    from imgpipeline.defs.tables import FRAMES

    hours = sorted({r.event_hour for r in records})
    rows = FRAMES.stored_hours(store, hours, ["source_id", "frame_id", "status"]).to_pylist()
    counted = Counter((r["source_id"], r["frame_id"]) for r in rows)
    sent = {(c.source, f) for c in cameras for f in c.sent}
    offsets: dict[tuple, set] = {}
    for r in records:
        if r.processed:
            offsets.setdefault(r.identity, set()).add((r.partition, r.offset))
    frames = {"sent": len(sent), "rows": sum(counted.values()), "lost": len(sent - set(counted)),
              "doubled": sum(n - 1 for n in counted.values() if n > 1), "extra": len(set(counted) - sent),
              "statuses": dict(Counter(r["status"] for r in rows)),
              "detected_twice": sum(len(at) > 1 for at in offsets.values())}
    mismatched = []
    for hour in hours:
        in_landing = {r.identity for r in records if r.event_hour == hour}
        stored = FRAMES.stored_hour(store, hour).select(["source_id", "frame_id"]).to_pylist()
        if len(stored) != len(in_landing) or {(r["source_id"], r["frame_id"]) for r in stored} != in_landing:
            mismatched.append(hour.strftime("%Y-%m-%d-%H:00"))
    return frames, {"checked": len(hours), "mismatched": len(mismatched), "which": mismatched}


def offset_counts(chaos, instance, records) -> dict:
    """Every offset of the frames topic: a landing record at it, or a repeat of a frame landed from
    another offset (a producer's send again); and none in no range of the ledger."""
    messages = topic_messages(chaos.kafka)
    at = {(r.partition, r.offset) for r in records if r.offset is not None}
    frames = {r.frame_id for r in records}
    without = [(p, o) for (p, o), frame in messages.items() if (p, o) not in at and frame not in frames]
    repeats = sum((p, o) not in at and frame in frames for (p, o), frame in messages.items())
    return {"end": len(messages), "with_record": len(at & set(messages)), "repeats": repeats,
            "without_record": len(without), "holes": ledger_holes(chaos, instance),
            "first_without": sorted(without)[:10]}


def alert_counts(chaos, hook, records) -> dict:
    """The alerts tables' numbers against the alerts topic and the webhook's posts: each number once in
    the tables, once on Kafka, posted once. A number on Kafka or at the webhook twice is an alert sent
    again under its number (and at the webhook under its idempotency key): a kill between a send and its
    record, or the hourly run reading the ledger before the live lane recorded its send (docs/alerts.md).
    `kafka_conflicting` and `webhook_conflicting` count numbers whose messages say different alerts (or
    come under different idempotency keys), which no resend explains."""
    tables = table_numbers(chaos, records)
    messages = [json.loads(r.value) for r in read_topic(chaos.kafka, chaos.kafka.alerts_topic)]
    on_kafka = Counter(m["number"] for m in messages)
    said = {(m["number"], m["rule"], m["source_id"], m["frame_id"], m["fired_at"]) for m in messages}
    posted = Counter(hook.delivered())
    told = {(r["body"]["number"], r["body"]["rule"], r["body"]["source_id"], r["body"]["frame_id"],
             r["body"]["fired_at"], r["headers"].get("Idempotency-Key")) for r in hook.requests
            if r["status"] == 200}
    return {"tables": len(tables), "tables_doubled": sum(n - 1 for n in tables.values()),
            "kafka_missing": len(set(tables) - set(on_kafka)),
            "kafka_doubled": sum(n - 1 for n in on_kafka.values() if n > 1),
            "kafka_conflicting": len(said) - len(on_kafka),
            "kafka_extra": len(set(on_kafka) - set(tables)),
            "webhook_missing": len(set(tables) - set(posted)),
            "webhook_doubled": sum(n - 1 for n in posted.values() if n > 1),
            "webhook_conflicting": len(told) - len(posted),
            "webhook_extra": len(set(posted) - set(tables))}


def reckon(chaos, cameras, hook, settle_s: float, last_fault_s: float) -> dict:
    from imgpipeline.lib.instance import open_instance

    print(f"cameras stopped; waiting for everything to land, be accounted for, made and delivered (at most "
          f"{settle_s:g} s) …")
    with open_instance(chaos.local.dagster.dagster_home) as instance:  # the faults are over: one will do
        settled, records = wait_settled(chaos, instance, cameras, hook, settle_s)
        settle = round(time.monotonic() - chaos.started - last_fault_s, 1)
        offsets = offset_counts(chaos, instance, records)
    frames, hours = frame_counts(chaos.storage.open(), cameras, records)
    return {"settled": settled, "settle_s": settle, "frames": frames, "hours": hours,
            "per_camera": {c.source: len(c.sent) for c in cameras},
            "offsets": offsets, "alerts": alert_counts(chaos, hook, records)}
