"""Late frames re-materialize the right hour without a person stepping in, and an update that lands
while its hour is being made is made once more."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest
from dagster_duckdb import DuckDBResource

from imgpipeline.cli.samples import sample
from imgpipeline.defs.partitions import hourly_partitions
from imgpipeline.defs.streaming.assets import kafka_frames, landing_metadata
from imgpipeline.defs.tables import CLASS_HOURS, DETECTIONS, FRAMES, LANDING_ASSET, OBJECT_COUNTS, TRACKS
from imgpipeline.defs.tracking.assets import tracking_tables
from imgpipeline.defs.warehouse.assets import daily_summary, hourly_tables
from imgpipeline.ingest.producer import FrameProducer, Ledger
from imgpipeline.ingest.sources import video_frames
from imgpipeline.resources import StorageResource, TrackingResource
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
    at = datetime.now(UTC)  # every evaluation at one moment: an hour begun between two would be requested
    with fresh_instance() as instance:
        # The first evaluation sets the baseline, as the automation sensor's first tick does.
        baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=at)
        assert baseline.total_requested == 0
        produce(kafka, storage, tmp_path, datetime(2026, 11, 20, 10, 30, tzinfo=UTC), 5, "cam1")
        drain(kafka, storage, instance)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=at,
                                             cursor=baseline.cursor)
        assert requested_hours(first, "frames") == {"2026-11-20-10:00"}
        assert requested_hours(first, "detections") == {"2026-11-20-10:00"}

        # Nothing new: nothing requested.
        quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=at,
                                             cursor=first.cursor)
        assert requested_hours(quiet, "frames") == set()

        # A late frame for an old hour lands: that hour, and only that one, is requested.
        produce(kafka, storage, tmp_path, datetime(2026, 11, 19, 7, 15, tzinfo=UTC), 1, "late-cam")
        drain(kafka, storage, instance)
        late = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=at,
                                            cursor=quiet.cursor)
        assert requested_hours(late, "frames") == {"2026-11-19-07:00"}


HOUR = "2026-11-20-10:00"


def updated(instance, *keys: dg.AssetKey, hours=(HOUR,)) -> None:
    for key in keys:
        for hour in hours:
            instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=hour))


@pytest.mark.parametrize("tick_between", [True, False], ids=["after-a-tick", "before-the-next-tick"])
@pytest.mark.parametrize(("upstream", "targets"), [
    ((LANDING_ASSET,), (FRAMES.key, DETECTIONS.key, CLASS_HOURS.key)),
    ((FRAMES.key, DETECTIONS.key), (TRACKS.key, OBJECT_COUNTS.key)),
], ids=["warehouse", "tracking"])
def test_an_update_during_the_hours_run_asks_for_one_more(tmp_path, upstream, targets, tick_between):
    """The run in progress read its hour before the update: when it is done, the hour is made again,
    once (Dagster's eager() would count the run's own materialization as having handled the update),
    whether a tick saw the run before the update landed or not."""
    job = dg.define_asset_job("made", selection=list(targets), partitions_def=hourly_partitions)
    defs = dg.Definitions(
        assets=[kafka_frames, landing_metadata, hourly_tables, tracking_tables], jobs=[job],
        resources={"storage": StorageResource(uri=tmp_path.as_uri()), "tracking": TrackingResource()},
    )
    at = datetime.now(UTC)  # every evaluation at one moment: an hour begun between two would be requested
    with fresh_instance() as instance:
        evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=at)

        def requested() -> set[str]:
            nonlocal evaluation
            evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=at,
                                                           cursor=evaluation.cursor)
            return {hour for key in targets for hour in evaluation.get_requested_partitions(key)}

        updated(instance, *upstream)
        first = requested()  # the hour, and for the counts the hours beside it too
        assert HOUR in first
        run = instance.create_run_for_job(
            defs.resolve_job_def("made"), asset_selection=frozenset(targets),
            tags={"dagster/asset_partition_range_start": min(first),
                  "dagster/asset_partition_range_end": max(first)})
        if tick_between:
            assert requested() == set()
        updated(instance, *upstream)  # lands while the run is in progress: it waits for the run
        assert requested() == set()
        # The run writes what it read before the update, and ends.
        updated(instance, *targets, hours=sorted(first))
        instance.report_dagster_event(dg.DagsterEvent(
            dg.DagsterEventType.RUN_SUCCESS.value, job_name=run.job_name), run.run_id)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.SUCCESS
        assert requested() == first
        assert requested() == set()  # once, not again and again
