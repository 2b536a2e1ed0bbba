"""The resources every domain shares, each built from its own settings (checked at load)."""

from dagster_duckdb import DuckDBResource

from imgpipeline.resources import DetectorResource, KafkaResource, StorageResource, TrackingResource


def resources_from_env() -> dict:
    return {
        "kafka": KafkaResource.from_env(),
        "storage": StorageResource.from_env(),
        "detector": DetectorResource.from_env(),
        "tracking": TrackingResource.from_env(),
        "duckdb": DuckDBResource(database=":memory:"),
    }
