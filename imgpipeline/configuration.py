"""Every setting of the project as one tree: `Settings`, whose branches are the models that declare
settings (each in the module of what it configures, `resources/settings.py` says how a setting is
declared).

The tree is read from the environment once, where the code location is made (`definitions.py`) or by the
command that needs it, and handed down: the run resources are branches of it, sensors are built with
theirs, and a run reads its settings from its resources, never from the environment. A run's resources
can be given in its run config like any Dagster resource's, so a run may be launched with settings of its
own (a test scenario, a one-off repair) from the code location that serves the others.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import get_type_hints

from dagster_duckdb import DuckDBResource

from imgpipeline.defs.automation import AutomationPolicy
from imgpipeline.defs.partitions import Calendar
from imgpipeline.defs.retention.sweep import DataRetention
from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.detect_frames import Screening
from imgpipeline.defs.streaming.health import SourcePolicy
from imgpipeline.defs.streaming.upkeep import InstanceRetention
from imgpipeline.defs.warehouse.compaction import Compaction
from imgpipeline.lib.instance import InstanceSettings
from imgpipeline.lib.run_priority import RunPriority
from imgpipeline.resources import (
    AlertsResource,
    DetectorResource,
    KafkaResource,
    S3ClientResource,
    StorageResource,
    TrackingResource,
)
from imgpipeline.resources.mqtt import MqttSettings
from imgpipeline.resources.viewer import ViewerAccess

# The branches that runs read, by the resource key they are given under.
RUN_RESOURCES = ("storage", "kafka", "detector", "tracking", "alert_rules", "mqtt", "screening",
                 "source_policy", "instance_retention", "data_retention", "compaction")


@dataclass(frozen=True)
class Settings:
    """The root of the settings: one branch per model, in the order `imgpipeline settings` lists them."""

    storage: StorageResource
    kafka: KafkaResource
    batch: BatchPolicy
    source_policy: SourcePolicy
    detector: DetectorResource
    tracking: TrackingResource
    alert_rules: AlertsResource
    viewer: ViewerAccess
    mqtt: MqttSettings
    calendar: Calendar
    automation: AutomationPolicy
    run_priority: RunPriority
    instance: InstanceSettings
    instance_retention: InstanceRetention
    data_retention: DataRetention
    screening: Screening
    compaction: Compaction

    @classmethod
    def from_env(cls) -> Settings:
        """Every branch from the environment (a bad value raises ConfigError with its fix). The alert
        rules are the checkout's only with the checkout's zones (`AlertsResource.for_zones`)."""
        branches = {name: model.from_env() for name, model in branches_of(cls).items()
                    if name != "alert_rules"}
        rules = AlertsResource.from_env().for_zones(branches["tracking"].zones_path())
        return cls(**branches, alert_rules=rules)

    def checked(self) -> Settings:
        """The tree, once its branches agree: rules and zones are separate files, so a rule naming a line
        that is not drawn fails here, at load, and so does a rule naming a class the live model does not
        know."""
        self.alert_rules.check_against(self.tracking.zones(), self.detector.spec())
        self.alert_rules.links()  # a link key too short says so now, not at the first alert
        return self

    def resources(self) -> dict:
        """The resources of the code location's runs."""
        return {key: getattr(self, key) for key in RUN_RESOURCES} | {
            "duckdb": DuckDBResource(database=":memory:")}


def branches_of(tree: type[Settings] = Settings) -> dict[str, type]:
    """Each branch's model by its name, in the tree's order."""
    hints = get_type_hints(tree)
    return {f.name: hints[f.name] for f in fields(tree)}


def setting_models() -> list[type]:
    """Every model whose fields are settings: the branches, and the S3 client that storage holds."""
    models = list(branches_of().values())
    return [*models[:1], S3ClientResource, *models[1:]]
