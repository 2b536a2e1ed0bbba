"""The code location: every asset, job, sensor, schedule and resource, assembled once."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from imgpipeline.assets.streaming import kafka_frames, landing_metadata
from imgpipeline.assets.warehouse import (
    daily_summary,
    daily_summary_job,
    daily_summary_schedule,
    hourly_tables,
    warehouse_automation,
)
from imgpipeline.config import Settings
from imgpipeline.jobs.detect_frames import detect_frames
from imgpipeline.resources import DetectorResource, KafkaResource, StorageResource
from imgpipeline.sensors.frames_sensor import BatchPolicy, build_frames_sensor


def build_resources(settings: Settings) -> dict:
    return {
        "kafka": KafkaResource.from_settings(settings),
        "storage": StorageResource.from_settings(settings),
        # 0 = OpenCV's default (all cores). One thread per run, with two runs overlapping,
        # measured the same frames/s within noise (`imgpipeline bench pipeline`).
        "detector": DetectorResource(
            threads=settings.detector_threads, workers=settings.detector_workers
        ),
        "duckdb": DuckDBResource(database=":memory:"),
    }


def batch_policy(settings: Settings) -> BatchPolicy:
    return BatchPolicy(
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_s,
        max_runs_in_flight=settings.max_runs_in_flight,
        interval_s=settings.sensor_interval_s,
        watch_s=settings.sensor_watch_s,
    )


# Settings are read and checked here, so a bad one fails the load with a message to fix it.
settings = Settings.from_env()
defs = dg.Definitions(
    assets=[kafka_frames, landing_metadata, hourly_tables, daily_summary],
    jobs=[detect_frames, daily_summary_job],
    sensors=[build_frames_sensor(batch_policy(settings)), warehouse_automation],
    schedules=[daily_summary_schedule],
    resources=build_resources(settings),
    # One process per run: a step subprocess would add seconds to every short asset run.
    executor=dg.in_process_executor,
)
