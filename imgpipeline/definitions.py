"""The code location: every asset, job, sensor, schedule and resource, assembled once."""

import warnings

import dagster as dg

from imgpipeline.assets.streaming import kafka_frames, landing_metadata
from imgpipeline.config import Settings
from imgpipeline.jobs.detect_frames import detect_frames
from imgpipeline.resources import DetectorResource, KafkaResource, StorageResource
from imgpipeline.sensors.frames_sensor import BatchPolicy, build_frames_sensor


def build_resources(settings: Settings) -> dict:
    return {
        "kafka": KafkaResource.from_settings(settings),
        "storage": StorageResource.from_settings(settings),
        "detector": DetectorResource(),
    }


def batch_policy(settings: Settings) -> BatchPolicy:
    return BatchPolicy(
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_s,
        max_runs_in_flight=settings.max_runs_in_flight,
        interval_s=settings.sensor_interval_s,
    )


# Dagster's own sensor constructor passes a beta parameter; the warning is not ours to fix.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

# Settings are read and checked here, so a bad one fails the load with a message to fix it.
settings = Settings.from_env()
defs = dg.Definitions(
    assets=[kafka_frames, landing_metadata],
    jobs=[detect_frames],
    sensors=[build_frames_sensor(batch_policy(settings))],
    resources=build_resources(settings),
)
