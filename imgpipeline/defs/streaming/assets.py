"""The streaming side of the lineage graph: the frames topic and the landing metadata, with their keys."""

import dagster as dg

from imgpipeline.defs.partitions import hourly_partitions
from imgpipeline.defs.tables import LANDING_ASSET, TOPIC_ASSET

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
        "<topic>-<partition>-<start>-<end>.jsonl, one file per run and event-time hour "
        "(docs/contracts.md)."
    ),
    group_name="streaming",
    partitions_def=hourly_partitions,
    deps=[kafka_frames],
    kinds={"json"},
)
