"""The demo's data, made as the demo makes it: the street video and two photos through Kafka, real
detect_frames runs, the hourly tables, tracking, alerts (with the checkout's zones and rules), the daily
summary and report."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster_duckdb import DuckDBResource

from imgpipeline.cli.samples import sample
from imgpipeline.defs.alerts.assets import alerts
from imgpipeline.defs.reports.assets import daily_report
from imgpipeline.defs.tracking.assets import tracking_tables
from imgpipeline.defs.warehouse.assets import daily_summary, hourly_tables
from imgpipeline.ingest.producer import FrameProducer, Ledger
from imgpipeline.ingest.sources import image_frame, video_frames
from imgpipeline.paths import PACKAGE_DIR
from imgpipeline.resources import AlertsResource, TrackingResource
from imgpipeline.resources.mqtt import MqttSettings
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import drain

START = datetime(2026, 11, 20, 10, 59, 55, tzinfo=UTC)  # the 10 s video runs over 11:00
DAY = "2026-11-20"


def street_in(services, folder) -> dict:
    """The demo's data in `folder`, on fresh topics of the session's broker; the resources used."""
    import uuid

    from imgpipeline.resources import KafkaResource, StorageResource

    kafka = KafkaResource(bootstrap_servers=services.kafka.address(services.kafka.ports),
                          frames_topic=f"frames-{uuid.uuid4().hex[:8]}",
                          alerts_topic=f"alerts-{uuid.uuid4().hex[:8]}")
    kafka.ensure_topics(partitions=2)
    return make_street(kafka, StorageResource(uri=(folder / "store").as_uri()), folder)


def make_street(kafka, storage, folder) -> dict:
    """Produce, detect and build everything the viewer shows; the resources used."""
    video = FrameProducer(kafka, storage, "street-cam", ledger=Ledger(folder / "ledger-video"))
    video.send_all(video_frames(str(sample("bikes.mp4")), "street-cam", start=START), progress=False)
    photos = [dataclasses.replace(image_frame(sample(name), name.split(".")[0], None),
                                  captured=START + timedelta(seconds=2 + i))
              for i, name in enumerate(("bus.jpg", "zidane.jpg"))]
    stills = FrameProducer(kafka, storage, "photos", ledger=Ledger(folder / "ledger-photos"))
    stills.send_all(photos, progress=False)
    resources = {
        "storage": storage, "kafka": kafka, "duckdb": DuckDBResource(database=":memory:"),
        "tracking": TrackingResource(zones_file=str(PACKAGE_DIR.parent / "zones.yaml")),
        "alert_rules": AlertsResource(alerts_file=str(PACKAGE_DIR.parent / "alerts.yaml")),
        "mqtt": MqttSettings(),  # publishing nothing
    }
    with fresh_instance() as instance:
        drain(kafka, storage, instance)
        for assets, first, last in (([hourly_tables], "2026-11-20-10:00", "2026-11-20-11:00"),
                                    ([tracking_tables], "2026-11-20-10:00", "2026-11-20-11:00"),
                                    ([alerts], "2026-11-20-10:00", "2026-11-20-11:00"),
                                    ([daily_summary], DAY, DAY), ([daily_report], DAY, DAY)):
            result = dg.materialize(assets, instance=instance, resources=resources, tags={
                "dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})
            assert result.success
    return resources
