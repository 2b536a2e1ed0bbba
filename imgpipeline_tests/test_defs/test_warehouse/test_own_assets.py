"""Assets of one's own on the warehouse's tables, through the code location's IO manager: an hourly asset
that takes `detections` receives the hour's rows, a daily one the day's; an hour not built gives none;
what such an asset returns is kept for the next asset of one's own. Real materializations of the
project's hourly tables and of the assets of docs/warehouse.md#assets-of-your-own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from imgpipeline.defs.partitions import daily_partitions, hourly_partitions
from imgpipeline.defs.tables import DETECTIONS
from imgpipeline.defs.tables.io_manager import TablesIOManager
from imgpipeline.defs.tracking.assets import tracking_tables
from imgpipeline.defs.warehouse.assets import hourly_tables
from imgpipeline.resources import TrackingResource
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.scenes import frames_of, landing_records, moving
from imgpipeline_tests.test_defs.test_tracking.test_tracking import land

pytestmark = [pytest.mark.instance, pytest.mark.results]

HOURS = [datetime(2026, 11, 20, 10, tzinfo=UTC), datetime(2026, 11, 20, 11, tzinfo=UTC)]


@dg.asset(partitions_def=hourly_partitions)
def busy_hours(detections: pd.DataFrame) -> pd.DataFrame:
    """Objects seen per class in the hour (the asset docs/warehouse.md shows)."""
    return detections.groupby("class_name").size().rename("objects").reset_index()


@dg.asset(partitions_def=daily_partitions)
def busy_day(detections: pa.Table) -> int:
    return detections.num_rows


@dg.asset(partitions_def=hourly_partitions)
def busiest_class(busy_hours: pd.DataFrame) -> str:
    """Downstream of an asset of one's own: its value, kept by the same IO manager."""
    return str(busy_hours.sort_values("objects").iloc[-1]["class_name"])


@dg.asset(partitions_def=hourly_partitions)
def counted(object_counts: pd.DataFrame) -> int:
    return len(object_counts)


def scene(hour: datetime) -> list:
    """Half a minute of people and cars in the hour; more cars in the second hour."""
    things = [moving("person", 100, 540, 2, 30), moving("car", 600, 50, 10, 30, y=300)]
    if hour == HOURS[1]:
        things.append(moving("car", 20, 400, 12, 30, y=460))
    return landing_records(frames_of(things, hour + timedelta(seconds=5), 30, 4.0))


def materialize(assets: list, selection: list | None, key: str, resources: dict,
                instance) -> dg.ExecuteInProcessResult:
    return dg.materialize([hourly_tables, *assets], selection=selection, partition_key=key, instance=instance,
                          resources=resources, raise_on_error=False)


def test_an_asset_of_ones_own_receives_the_hour_and_a_daily_one_the_day(storage, tmp_path):
    store = storage.open()
    for hour in HOURS:
        land(store, scene(hour), ranges=f"frames-0-{hour.hour}-{hour.hour + 1}")
    resources = {"storage": storage, "tracking": TrackingResource(),
                 "io_manager": TablesIOManager(storage=storage, base_dir=str(tmp_path / "values"))}
    with fresh_instance() as instance:
        for hour in HOURS:
            assert materialize([], None, hour.strftime("%Y-%m-%d-%H:00"), resources, instance).success
        stored = [DETECTIONS.read(store, DETECTIONS.hour_key(hour)).to_pandas() for hour in HOURS]
        assert len(stored[1]) > len(stored[0]) > 0

        # The hour's rows, as the table holds them.
        result = materialize([busy_hours, busiest_class], ["busy_hours", "busiest_class"], "2026-11-20-11:00",
                             resources, instance)
        assert result.success
        expected = stored[1].groupby("class_name").size().rename("objects").reset_index()
        pd.testing.assert_frame_equal(result.output_for_node("busy_hours"), expected)
        assert result.output_for_node("busiest_class") == "car"

        # The day's: both hours, as a pyarrow Table; a stray copy beside an hour's file (not of the layout's
        # names) is not read.
        stray = DETECTIONS.hour_key(HOURS[1]).replace("part-0", "part-0 (copy)")
        store.put(stray, store.get(DETECTIONS.hour_key(HOURS[1])))
        result = materialize([busy_day], ["busy_day"], "2026-11-20", resources, instance)
        assert result.success
        assert result.output_for_node("busy_day") == len(stored[0]) + len(stored[1])

        # An hour not built: no rows, the table's columns.
        result = materialize([busy_hours], ["busy_hours"], "2026-11-20-12:00", resources, instance)
        assert result.success
        assert list(result.output_for_node("busy_hours").columns) == ["class_name", "objects"]
        assert result.output_for_node("busy_hours").empty


def test_a_table_an_input_cannot_take_fails_the_run_with_what_to_do_instead(storage, tmp_path):
    resources = {"storage": storage, "tracking": TrackingResource(),
                 "io_manager": TablesIOManager(storage=storage, base_dir=str(tmp_path / "values"))}
    with fresh_instance() as instance:
        result = dg.materialize([tracking_tables, counted], selection=["counted"], instance=instance,
                                partition_key="2026-11-20-11:00", resources=resources, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "object_counts keeps a file per zones file" in str(failure.event_specific_data.error)
    assert "imgpipeline query" in str(failure.event_specific_data.error)
