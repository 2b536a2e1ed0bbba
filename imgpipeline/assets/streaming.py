"""The streaming side of the lineage graph: assets that runs and sensors report on."""

import dagster as dg

from imgpipeline.jobs.detect_frames import LANDING_ASSET
from imgpipeline.partitions import hourly_partitions
from imgpipeline.sensors.frames_sensor import TOPIC_ASSET

kafka_frames = dg.AssetSpec(
    TOPIC_ASSET,
    description="The Kafka frames topic. frames_sensor observes its end offsets and lag.",
    group_name="streaming",
    kinds={"kafka"},
)

landing_metadata = dg.AssetSpec(
    LANDING_ASSET,
    description=(
        "Per-frame metadata written by detect_frames runs: landing/metadata/dt=…/hour=…/"
        "<topic>-<partition>-<start>-<end>.jsonl, one file per run and event-time hour."
    ),
    group_name="streaming",
    partitions_def=hourly_partitions,
    deps=[kafka_frames],
    kinds={"json"},
)
