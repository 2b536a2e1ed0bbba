"""The code location: every asset, job, sensor, schedule and resource, assembled once."""

import dagster as dg

from imgpipeline.config import Settings
from imgpipeline.resources import DetectorResource, KafkaResource, StorageResource


def build_resources(settings: Settings) -> dict:
    return {
        "kafka": KafkaResource.from_settings(settings),
        "storage": StorageResource.from_settings(settings),
        "detector": DetectorResource(),
    }


# Settings are read and checked here, so a bad one fails the load with a message to fix it.
defs = dg.Definitions(resources=build_resources(Settings.from_env()))
