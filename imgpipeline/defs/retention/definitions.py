"""The retention domain's Definitions: a daily job that deletes by age what the store keeps (sweep.py)
and has the broker keep dead letters for their stated time."""

from datetime import date

import dagster as dg

from imgpipeline.defs.partitions import scheduled_job
from imgpipeline.defs.retention.sweep import DataRetention, record_key, sweep, totals
from imgpipeline.resources import KafkaResource, StorageResource


@dg.op(description="Deletes frames, annotated images, landing and reports past their keeping time; sets "
                   "the dead-letter topics' retention; records what it deleted under retention/.")
def delete_by_age(context: dg.OpExecutionContext, storage: StorageResource, kafka: KafkaResource,
                  data_retention: DataRetention) -> dg.Output[dict]:
    retention = data_retention
    store = storage.open()
    record = sweep(store, retention, log=context.log.info, keep_dead_letters=kafka.keep_dead_letters)
    deleted = totals(record)
    return dg.Output(deleted, metadata={
        "deleted": dg.MetadataValue.int(sum(deleted.values())),
        "by_kind": dg.MetadataValue.json(deleted),
        "kept": dg.MetadataValue.json(record["kept"]),
        "keep_days": dg.MetadataValue.json(retention.model_dump()),
        "record": dg.MetadataValue.path(store.uri(record_key(date.fromisoformat(record["day"])))),
    })


retention_job, retention_schedule = scheduled_job(
    "retention", delete_by_age, "47 3 * * *",
    "Deletes what is past its keeping time (IMGPIPELINE_*_KEEP_DAYS) and records it under "
    "retention/<date>.json.")

defs = dg.Definitions(jobs=[retention_job], schedules=[retention_schedule])
