"""Dagster resources: Kafka, storage, the detector and tracking."""

from imgpipeline.resources.detector import DetectorResource
from imgpipeline.resources.kafka import KafkaResource
from imgpipeline.resources.storage import StorageResource
from imgpipeline.resources.tracking import TrackingResource

__all__ = ["DetectorResource", "KafkaResource", "StorageResource", "TrackingResource"]
