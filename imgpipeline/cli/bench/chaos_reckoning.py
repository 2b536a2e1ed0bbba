"""What `imgpipeline bench chaos` counts once its cameras stopped: it waits until every frame sent landed
and each hour's tables and alerts were made after that, then compares the frames sent with the rows, the
topic's offsets with the landing and the ledger, each hour's rows with its landing, and the alerts of the
tables with the alerts topic and the webhook."""

from __future__ import annotations

import json
import time
from collections import Counter

from imgpipeline.cli.bench.latency import made_after


def topic_messages(kafka) -> dict[tuple[int, int], str | None]:
    """Every message of the frames topic: (partition, offset) → its frame id (None: not a frame)."""
    from kafka import TopicPartition

    from imgpipeline.ingest.messages import BadInput, parse_message

    consumer = kafka.consumer(group_id=None)
    try:
        partitions = sorted(consumer.partitions_for_topic(kafka.frames_topic) or ())
        tps = [TopicPartition(kafka.frames_topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(tps)
        found: dict[tuple[int, int], str | None] = {}
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=1000).values():
                for r in records:
                    try:
                        found[r.partition, r.offset] = parse_message(r.value, r.headers)[0].frame_id
                    except BadInput:
                        found[r.partition, r.offset] = None
        return found
    finally:
        consumer.close()


def topic_alerts(kafka) -> list[dict]:
    from kafka import TopicPartition

    consumer = kafka.consumer(group_id=None)
    try:
        tps = [TopicPartition(kafka.alerts_topic, p)
               for p in sorted(consumer.partitions_for_topic(kafka.alerts_topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(tps)
        found = []
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=1000).values():
                found += [json.loads(r.value) for r in records]
        return found
    finally:
        consumer.close()


def landed(store) -> list:
    from imgpipeline.defs.streaming.landing import all_records

    return all_records(store)


def wait_settled(chaos, cameras, settle_s: float) -> tuple[bool, list]:
    """Until every frame sent has a processed landing record and each of their hours' detections and
    alerts were made by runs created after the last of them was processed; the landing records."""
    from imgpipeline.ingest.messages import parse_time
    from imgpipeline.lib.instance import open_instance

    store = chaos.storage.open()
    sent = {(c.source, f) for c in cameras for f in c.sent}
    started = time.monotonic()
    deadline, said = started + settle_s, started
    records, missing = [], len(sent)
    while time.monotonic() < deadline:
        records = landed(store)
        missing = len(sent - {r.identity for r in records if r.processed})
        if not missing:
            last = max(parse_time(r.processed_at).timestamp() for r in records if r.processed_at)
            hours = sorted({r.event_hour.strftime("%Y-%m-%d-%H:00") for r in records})
            with open_instance(chaos.local.dagster.dagster_home) as instance:
                if made_after(instance, hours, last):
                    return True, records
        if time.monotonic() - said >= 60:
            said = time.monotonic()
            waiting = (f"{missing} frames sent have not landed yet" if missing
                       else "all landed; the hours' tables and alerts not made yet")
            print(f"  {said - started:.0f} s: {waiting}", flush=True)
        time.sleep(5)
    print(f"  not settled within {settle_s:g} s: {missing} frames sent without a landing record; "
          f"see {chaos.local.dagster.logfile}")
    return False, records


def frame_counts(store, cameras, records) -> tuple[dict, dict]:
    """The frames sent against the rows of their hours' `frames`; each hour's rows against its landing."""
    from imgpipeline.defs.tables import FRAMES

    hours = sorted({r.event_hour for r in records})
    rows = FRAMES.stored_hours(store, hours, ["source_id", "frame_id"]).to_pylist()
    counted = Counter((r["source_id"], r["frame_id"]) for r in rows)
    sent = {(c.source, f) for c in cameras for f in c.sent}
    frames = {"sent": len(sent), "rows": sum(counted.values()), "lost": len(sent - set(counted)),
              "doubled": sum(n - 1 for n in counted.values() if n > 1), "extra": len(set(counted) - sent)}
    mismatched = []
    for hour in hours:
        in_landing = {r.identity for r in records if r.event_hour == hour}
        stored = FRAMES.stored_hour(store, hour).select(["source_id", "frame_id"]).to_pylist()
        if len(stored) != len(in_landing) or {(r["source_id"], r["frame_id"]) for r in stored} != in_landing:
            mismatched.append(hour.strftime("%Y-%m-%d-%H:00"))
    return frames, {"checked": len(hours), "mismatched": len(mismatched), "which": mismatched}


def offset_counts(chaos, records) -> dict:
    """Every offset of the frames topic: a landing record at it, or a repeat of a frame landed from
    another offset; and no offset outside the ledger's ranges (the reconciliation's holes)."""
    from imgpipeline.defs.streaming.reconcile import coverage
    from imgpipeline.lib.instance import open_instance

    messages = topic_messages(chaos.kafka)
    at = {(r.partition, r.offset) for r in records if r.offset is not None}
    frames = {r.frame_id for r in records}
    without = [(p, o) for (p, o), frame in messages.items() if (p, o) not in at and frame not in frames]
    repeats = sum((p, o) not in at and frame in frames for (p, o), frame in messages.items())
    with open_instance(chaos.local.dagster.dagster_home) as instance:
        holes = sum(c.missing for c in coverage(chaos.storage.open(), chaos.kafka, instance))
    return {"end": len(messages), "with_record": len(at & set(messages)), "repeats": repeats,
            "without_record": len(without), "holes": holes, "first_without": sorted(without)[:10]}


def alert_counts(chaos, hook, records) -> dict:
    """The alerts tables' numbers against the alerts topic and the webhook's posts."""
    from imgpipeline.defs.tables import ALERTS

    hours = sorted({r.event_hour for r in records})
    tables = set(ALERTS.stored_hours(chaos.storage.open(), hours, ["number"]).column("number").to_pylist())
    on_kafka = Counter(m["number"] for m in topic_alerts(chaos.kafka))
    posted = Counter(number for number, _ in hook.posts)
    keys = {}
    for number, key in hook.posts:
        keys.setdefault(number, set()).add(key)
    return {"tables": len(tables),
            "kafka_missing": len(tables - set(on_kafka)),
            "kafka_doubled": sum(n - 1 for n in on_kafka.values() if n > 1),
            "kafka_extra": len(set(on_kafka) - tables),
            "webhook_missing": len(tables - set(posted)),
            "webhook_doubled": sum(len(k) - 1 for k in keys.values()),
            "webhook_repeats": sum(n - 1 for n in posted.values() if n > 1),
            "webhook_extra": len(set(posted) - tables)}


def reckon(chaos, cameras, hook, settle_s: float, last_fault_s: float) -> dict:
    print(f"cameras stopped; waiting for everything to land and the hours' tables and alerts (at most "
          f"{settle_s:g} s) …")
    settled, records = wait_settled(chaos, cameras, settle_s)
    settle = round(time.monotonic() - chaos.started - last_fault_s, 1)
    store = chaos.storage.open()
    frames, hours = frame_counts(store, cameras, records)
    return {"settled": settled, "settle_s": settle, "frames": frames, "hours": hours,
            "per_camera": {c.source: len(c.sent) for c in cameras},
            "offsets": offset_counts(chaos, records), "alerts": alert_counts(chaos, hook, records)}
