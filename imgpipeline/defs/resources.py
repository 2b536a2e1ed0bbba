"""The resources every domain shares, each built from its own settings (checked at load)."""

from dagster_duckdb import DuckDBResource

from imgpipeline.resources import (
    AlertsResource,
    DetectorResource,
    KafkaResource,
    StorageResource,
    TrackingResource,
)


def alert_rules_from_env(tracking: TrackingResource | None = None) -> AlertsResource:
    """The alert rules in use: the checkout's only with the checkout's zones (AlertsResource.for_zones)."""
    return AlertsResource.from_env().for_zones((tracking or TrackingResource.from_env()).zones_path())


def resources_from_env() -> dict:
    tracking = TrackingResource.from_env()
    alerts = alert_rules_from_env(tracking)
    # Rules and zones are separate files: a rule naming a line that is not drawn fails here, at load.
    # So does a rule naming a class the live model does not know.
    detector = DetectorResource.from_env()
    alerts.check_against(tracking.zones(), detector.spec())
    return {
        "kafka": KafkaResource.from_env(),
        "storage": StorageResource.from_env(),
        "detector": detector,
        "tracking": tracking,
        "alert_rules": alerts,
        "duckdb": DuckDBResource(database=":memory:"),
    }
