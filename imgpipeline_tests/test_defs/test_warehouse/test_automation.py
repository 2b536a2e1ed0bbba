"""Late frames re-materialize the right hour without a person stepping in."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest
from dagster_duckdb import DuckDBResource

from imgpipeline.cli.fetch import sample
from imgpipeline.defs.streaming.assets import kafka_frames, landing_metadata
from imgpipeline.defs.warehouse.assets import daily_summary, hourly_tables
from imgpipeline.ingest.producer import FrameProducer, Ledger
from imgpipeline.ingest.sources import video_frames
from imgpipeline.resources import TrackingResource
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import drain

pytestmark = [pytest.mark.integration, pytest.mark.instance]


def requested_hours(result, key: str) -> set[str]:
    return set(result.get_requested_partitions(dg.AssetKey(key)))


def produce(kafka, storage, tmp_path, start, count, source):
    frames = list(video_frames(str(sample("bikes.mp4")), source, start=start, max_frames=count))
    FrameProducer(kafka, storage, source, ledger=Ledger(tmp_path / f"{source}.sent")).send_all(
        frames, progress=False)


def test_landing_updates_request_their_hours_even_late(kafka, storage, tmp_path):
    defs = dg.Definitions(
        assets=[kafka_frames, landing_metadata, hourly_tables, daily_summary],
        resources={"storage": storage, "duckdb": DuckDBResource(database=":memory:"),
                   "tracking": TrackingResource()},
    )
    with fresh_instance() as instance:
        # The first evaluation sets the baseline, as the automation sensor's first tick does.
        baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert baseline.total_requested == 0
        produce(kafka, storage, tmp_path, datetime(2026, 11, 20, 10, 30, tzinfo=UTC), 5, "cam1")
        drain(kafka, storage, instance)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
        assert requested_hours(first, "frames") == {"2026-11-20-10:00"}
        assert requested_hours(first, "detections") == {"2026-11-20-10:00"}

        # Nothing new: nothing requested.
        quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert requested_hours(quiet, "frames") == set()

        # A late frame for an old hour lands: that hour, and only that one, is requested.
        produce(kafka, storage, tmp_path, datetime(2026, 11, 19, 7, 15, tzinfo=UTC), 1, "late-cam")
        drain(kafka, storage, instance)
        late = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=quiet.cursor)
        assert requested_hours(late, "frames") == {"2026-11-19-07:00"}
