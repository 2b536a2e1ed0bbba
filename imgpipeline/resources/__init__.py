"""Dagster resources: Kafka, storage and the detector."""

from imgpipeline.resources.detector import DetectorResource
from imgpipeline.resources.kafka import KafkaResource
from imgpipeline.resources.storage import StorageResource

__all__ = ["DetectorResource", "KafkaResource", "StorageResource"]
