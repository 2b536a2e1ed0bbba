"""The streaming domain's Definitions: the topic and landing assets, detect_frames and frames_sensor,
reconciliation, the sources' freshness and the purge of old runs."""

import dagster as dg

from imgpipeline.defs.streaming.assets import kafka_frames, landing_metadata
from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.detect_frames import detect_frames
from imgpipeline.defs.streaming.follow import follow_frames
from imgpipeline.defs.streaming.frames_sensor import build_frames_sensor
from imgpipeline.defs.streaming.health import check_sources, check_sources_schedule, sources_fresh
from imgpipeline.defs.streaming.reconcile import (
    build_repair_sensor,
    offsets_accounted_for,
    reconcile_frames,
    reconcile_schedule,
)
from imgpipeline.defs.streaming.upkeep import purge_runs_job, purge_schedule


def definitions(policy: BatchPolicy) -> dg.Definitions:
    return dg.Definitions(
        assets=[kafka_frames, landing_metadata],
        asset_checks=[offsets_accounted_for, sources_fresh],
        jobs=[detect_frames, follow_frames, reconcile_frames, check_sources, purge_runs_job],
        sensors=[build_frames_sensor(policy), build_repair_sensor(policy)],
        schedules=[reconcile_schedule, check_sources_schedule, purge_schedule],
    )
