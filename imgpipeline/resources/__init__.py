"""Dagster resources: Kafka, storage (and its S3 client), the detector, tracking and alerts."""

from imgpipeline.resources.alerts import AlertsResource
from imgpipeline.resources.detector import DetectorResource
from imgpipeline.resources.kafka import KafkaResource
from imgpipeline.resources.storage import S3ClientResource, StorageResource
from imgpipeline.resources.tracking import TrackingResource

__all__ = ["AlertsResource", "DetectorResource", "KafkaResource", "S3ClientResource", "StorageResource",
           "TrackingResource"]
