"""The streaming side of the lineage graph: the frames topic and the landing metadata, with their keys."""

from datetime import timedelta

import dagster as dg

from imgpipeline.defs.partitions import hourly_partitions
from imgpipeline.defs.tables import LANDING_ASSET, TOPIC_ASSET

LANDING_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=10),
                                                   warn_window=timedelta(minutes=2))

kafka_frames = dg.AssetSpec(
    TOPIC_ASSET,
    description="The Kafka frames topic. frames_sensor observes its end offsets and lag; the fast lane's run "
                "its positions and lag per partition, frames/s and latency (charted in the UI).",
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
    # Frames land within seconds of their send while cameras send: nothing landed for 2 minutes warns,
    # for 10 fails (the cameras, the broker or the pipeline stopped). The daemon evaluates it every 30 s
    # (dagster.yaml: freshness).
    freshness_policy=LANDING_FRESHNESS,
)
