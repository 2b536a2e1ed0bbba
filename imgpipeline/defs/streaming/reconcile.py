"""Reconciliation: is every offset the sensor launched accounted for? The holes, and their repair.

The range ledger (`landing/ranges/`, written by each run before its commit) says which offsets runs
have accounted for. Up to the sensor's cursor, every offset still in the log must be in a ledger
range or in a run that is queued or running; what is not is a hole, named with its offsets.
`imgpipeline repair` runs the holes again.
"""

import json
from dataclasses import dataclass, field

import dagster as dg

from imgpipeline.defs.records.keys import range_name
from imgpipeline.defs.records.ledger import KEEP_LIVE, accounted_ranges, holes, range_entry, read_ledger
from imgpipeline.defs.records.runs import detect_runs_in_flight
from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.detect_frames import PARTITION_TAG, detect_frames, detect_run_config
from imgpipeline.defs.tables import TOPIC_ASSET
from imgpipeline.defs.ticks import bound, tick_instance
from imgpipeline.resources import KafkaResource, StorageResource
from imgpipeline.resources.storage import BadObject, Storage

SENSOR = "frames_sensor"


@dataclass
class Coverage:
    """One partition: offsets [beginning, upto) should be accounted for; `holes` are not."""

    partition: int
    generation: int
    beginning: int
    upto: int
    holes: list[tuple[int, int]] = field(default_factory=list)
    deleted_before_read: int = 0  # below the log's beginning and in no ledger range: retention's

    @property
    def missing(self) -> int:
        return sum(end - start for start, end in self.holes)


def sensor_cursor(instance: dg.DagsterInstance) -> dict:
    """frames_sensor's cursor as the daemon keeps it ({} before its first tick)."""
    from imgpipeline.lib.dagster_door import InstigatorType

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == SENSOR and state.instigator_data and state.instigator_data.cursor:
            return json.loads(state.instigator_data.cursor)
    return {}


# How many of the latest detect_frames runs the check reads for how far runs were launched, beside the
# sensor's cursor (which a range run by hand or by `imgpipeline repair` does not move).
RECENT_RUNS = 200


def launched_ranges(instance: dg.DagsterInstance, topic: str, generation: int
                    ) -> tuple[dict[int, int], dict[int, list[tuple[int, int]]]]:
    """Per partition of this topic and generation: the furthest end of its latest RECENT_RUNS
    detect_frames runs, and the ranges of its runs queued or running. Both read as many runs as that
    window and the runs in flight hold, whatever the instance's history."""
    furthest: dict[int, int] = {}
    running: dict[int, list[tuple[int, int]]] = {}
    latest = instance.get_runs(dg.RunsFilter(job_name=detect_frames.name), limit=RECENT_RUNS)
    for in_flight, runs in ((False, latest), (True, detect_runs_in_flight(instance))):
        for run in runs:
            config = run.run_config.get("ops", {}).get("detect", {}).get("config", {})
            if (config.get("topic") != topic or "end_offset" not in config or config.get("uris")
                    or config.get("generation", 0) != generation):
                continue
            partition, end = config.get("partition", 0), config["end_offset"]
            furthest[partition] = max(furthest.get(partition, 0), end)
            if in_flight:
                running.setdefault(partition, []).append((config["start_offset"], end))
    return furthest, running


def coverage(store: Storage, kafka: KafkaResource, instance: dg.DagsterInstance) -> list[Coverage]:
    """Per partition: up to the sensor's cursor (or the furthest of the latest runs), which offsets still in
    the log no ledger range and no queued or running run covers. It reads the cursor, the latest runs and
    those in flight, and the ledger's newest mark and live entries: a cost that does not grow with history."""
    from kafka import TopicPartition

    topic = kafka.frames_topic
    cursor = sensor_cursor(instance)
    if cursor.get("topic") not in (None, topic):
        cursor = {}
    generation = cursor.get("generation", 0)
    furthest, running = launched_ranges(instance, topic, generation)
    upto = {int(p): state["next"] for p, state in cursor.get("partitions", {}).items()}
    for partition, end in furthest.items():
        upto[partition] = max(upto.get(partition, 0), end)
    consumer = kafka.consumer(group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(upto)]
        beginnings = {tp.partition: o for tp, o in consumer.beginning_offsets(tps).items()} if tps else {}
    finally:
        consumer.close()
    report = []
    for partition, end in sorted(upto.items()):
        done = accounted_ranges(store, topic, partition, generation)
        beginning = min(beginnings.get(partition, 0), end)
        report.append(Coverage(
            partition, generation, beginning, end,
            holes=holes(done + running.get(partition, []), beginning, end),
            deleted_before_read=sum(e - s for s, e in holes(done, 0, beginning))))
    return report


# How many of a partition's latest ledger entries the check reads for duplicates: its cost stays flat
# whatever the history (the ledger keeps at least these live when it folds).
RECENT_RANGES = KEEP_LIVE


def recent_duplicates(store: Storage, topic: str, report: list[Coverage]) -> dict[int, list[list[int]]]:
    """Per partition, the offsets of duplicates (messages for frames already processed, not landed
    again) in its latest RECENT_RANGES accounted ranges still in the log, as [first, end) spans."""
    found = {}
    for c in report:
        live = read_ledger(store, topic, c.partition, c.generation).live_ranges
        recent = [r for r in live if r[1] > c.beginning]
        entries = []
        for start, end in recent[-RECENT_RANGES:]:
            try:
                entries.append(range_entry(store, topic, c.partition, start, end, c.generation))
            except BadObject:
                continue  # folded since it was listed
        spans = [span for entry in entries for span in entry.get("duplicates", [])]
        if spans:
            found[c.partition] = spans
    return found


@dg.asset_check(
    asset=TOPIC_ASSET,
    name="offsets_accounted_for",
    description="Every offset the sensor launched that is still in the log is accounted for — landed, "
                "dead-lettered, a duplicate or a recorded retention gap (the range ledger) — or in a run "
                "that is queued or running. Fails naming the holes; `imgpipeline repair` runs them again. "
                f"Shows the duplicates' offsets of each partition's latest {RECENT_RANGES} ranges.",
)
def offsets_accounted_for(context: dg.AssetCheckExecutionContext, kafka: KafkaResource,
                          storage: StorageResource) -> dg.AssetCheckResult:
    store = storage.open()
    report = coverage(store, kafka, context.instance)
    duplicates = recent_duplicates(store, kafka.frames_topic, report)
    return dg.AssetCheckResult(
        passed=not any(c.holes for c in report),
        metadata={
            "duplicates": dg.MetadataValue.int(sum(e - s for spans in duplicates.values() for s, e in spans)),
            "duplicate_offsets": dg.MetadataValue.json({str(p): spans[:50]
                                                        for p, spans in duplicates.items()}),
            "missing_offsets": dg.MetadataValue.int(sum(c.missing for c in report)),
            "holes": dg.MetadataValue.json({str(c.partition): [list(h) for h in c.holes[:50]]
                                            for c in report if c.holes}),
            "accounted_up_to": dg.MetadataValue.json({str(c.partition): c.upto for c in report}),
            "deleted_before_read": dg.MetadataValue.int(sum(c.deleted_before_read for c in report)),
        },
    )


reconcile_frames = dg.define_asset_job(
    "reconcile_frames", selection=dg.AssetSelection.checks(offsets_accounted_for),
    description="Checks that every launched offset of the frames topic is accounted for.",
)

reconcile_schedule = dg.ScheduleDefinition(
    job=reconcile_frames, cron_schedule="*/15 * * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


def repair_holes(instance: dg.DagsterInstance, resources: dict, max_batch: int, log=print) -> bool:
    """Run detect_frames over every hole (at most `max_batch` offsets a run), recorded in the instance
    and tagged `imgpipeline/repair`; True when nothing is left missing."""
    kafka, store = resources["kafka"], resources["storage"].open()
    report = coverage(store, kafka, instance)
    work = [(c.partition, c.generation, start, min(start + max_batch, end))
            for c in report for hole_start, end in c.holes for start in range(hole_start, end, max_batch)]
    for c in report:
        log(f"  partition {c.partition}: {c.beginning}..{c.upto - 1} launched, "
            f"{c.missing} missing in {len(c.holes)} holes {c.holes[:5]}")
    ok = True
    for partition, generation, start, end in work:
        result = detect_frames.execute_in_process(
            run_config=detect_run_config(kafka.frames_topic, partition, start, end, generation),
            instance=instance, resources=resources, raise_on_error=False,
            tags={PARTITION_TAG: f"{kafka.frames_topic}-{partition}", "imgpipeline/repair": "true"})
        ok &= result.success
        log(f"  repaired {kafka.frames_topic}-{partition} {start}..{end - 1}: "
            f"{'done' if result.success else 'FAILED, see run ' + result.run_id}")
    left = sum(c.missing for c in coverage(store, kafka, instance))
    log(f"{len(work)} repair runs; {left} offsets still missing")
    return ok and left == 0


# A hole is repaired first REPAIR_BACKOFF_S after it was seen (time for run retries to finish), then
# after twice as long each time, at most REPAIR_ATTEMPTS times; then it waits for `imgpipeline repair`.
REPAIR_BACKOFF_S = 300
REPAIR_ATTEMPTS = 5


def plan_repairs(report: list[Coverage], attempts: dict, now: float, max_batch: int, topic: str
                 ) -> tuple[list[tuple[int, int, int, int, int]], dict, list[str]]:
    """Pure: which holes to run again now (partition, generation, start, end, attempt), the next
    attempts record {range: {"n": tries so far, "at": when the wait began}}, and what gave up."""
    due, seen, given_up = [], {}, []
    for c in report:
        for hole_start, hole_end in c.holes:
            for start in range(hole_start, hole_end, max_batch):
                end = min(start + max_batch, hole_end)
                name = range_name(topic, c.partition, start, end, c.generation)
                state = seen[name] = dict(attempts.get(name, {"n": 0, "at": now}))
                if state["n"] >= REPAIR_ATTEMPTS:
                    given_up.append(name)
                elif now >= state["at"] + REPAIR_BACKOFF_S * 2 ** state["n"]:
                    state["n"] += 1
                    state["at"] = now
                    due.append((c.partition, c.generation, start, end, state["n"]))
    return due, seen, given_up  # ranges no longer holes drop out of the record


def build_repair_sensor(policy: BatchPolicy) -> dg.SensorDefinition:
    """The sensor that launches repairs, at most `policy.max_batch` offsets a run."""

    @dg.sensor(
        name="repair_sensor",
        job=detect_frames,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Runs again, with backoff ({REPAIR_BACKOFF_S} s, doubling, {REPAIR_ATTEMPTS} times), "
                    "every range the sensor launched that no run accounted for (a run that failed for good); "
                    "first has run retries read again a failure they missed.",
    )
    def repair_sensor(context: dg.SensorEvaluationContext):
        return repair_tick(context, policy.max_batch)

    return repair_sensor


def repair_tick(context: dg.SensorEvaluationContext, max_batch: int) -> dg.SensorResult:
    """One evaluation of the repair sensor: the repairs due, as run requests."""
    import time

    from imgpipeline.lib.retries import rewind_lost_retries

    kafka: KafkaResource = bound(context, "kafka")
    storage: StorageResource = bound(context, "storage")
    instance = tick_instance(context)
    for run_id in rewind_lost_retries(instance):
        context.log.warning(f"run {run_id} failed and run retries missed it: they read its failure again")
    topic = kafka.frames_topic
    report = coverage(storage.open(), kafka, instance)
    attempts = json.loads(context.cursor) if context.cursor else {}
    due, record, given_up = plan_repairs(report, attempts, time.time(), max_batch, topic)
    for name in given_up:
        context.log.warning(f"{name}: still missing after {REPAIR_ATTEMPTS} repairs; "
                            "run `imgpipeline repair`")
    requests = [dg.RunRequest(
        run_key=f"repair-{range_name(topic, partition, start, end, generation)}-{attempt}",
        run_config=detect_run_config(topic, partition, start, end, generation),
        tags={PARTITION_TAG: f"{topic}-{partition}", "imgpipeline/repair": str(attempt)},
    ) for partition, generation, start, end, attempt in due]
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(record),
                           skip_reason=None if requests else "no hole due for repair")
