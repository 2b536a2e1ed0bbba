"""Freshness as the daemon of the project's dagster.yaml evaluates it: landing_metadata unknown before a
frame landed, fresh after, a warning past 2 minutes without a landing, failed past 10; the hourly tables
warned past 10 minutes without a build and failed past 30; the daily summary failed once a day's 02:00
passed without it."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg

from imgpipeline.defs.tables import DAILY_SUMMARY, DETECTIONS, LANDING_ASSET
from imgpipeline_tests.test_lib.test_dagster_door import project_instance_home


def evaluated(instance: dg.DagsterInstance, later_s: float, monkeypatch,
              key: dg.AssetKey = LANDING_ASSET) -> str:
    """One pass of the freshness daemon over the code location, `later_s` after now; the state it kept."""
    from dagster._core.definitions import freshness_evaluator
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.freshness import FreshnessDaemon
    from dagster._time import get_current_timestamp

    now = get_current_timestamp()
    monkeypatch.setattr(freshness_evaluator, "get_current_timestamp", lambda: now + later_s)
    monkeypatch.setattr(freshness_evaluator, "get_current_datetime",  # the cron policy's clock
                        lambda tz="UTC": datetime.fromtimestamp(now + later_s, ZoneInfo(tz)))
    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="imgpipeline.definitions"))
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
        for _ in FreshnessDaemon().run_iteration(workspace):
            pass
    record = instance.get_freshness_state_records([key]).get(key)
    return record.freshness_state.value if record else "none"


def test_landing_warns_after_two_minutes_without_a_frame_and_fails_after_ten(tmp_path, monkeypatch):
    from dagster._daemon.controller import create_daemons_from_instance

    project_instance_home(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert "FRESHNESS_DAEMON" in {d.daemon_type() for d in create_daemons_from_instance(instance)}
        # No frame landed yet: the state is not known.
        assert evaluated(instance, 0, monkeypatch) in ("none", "UNKNOWN")
        landed = dg.AssetMaterialization(LANDING_ASSET, partition="2026-11-28-10:00")
        instance.report_runless_asset_event(landed)
        assert evaluated(instance, 30, monkeypatch) == "PASS"
        assert evaluated(instance, 150, monkeypatch) == "WARN"
        assert evaluated(instance, 660, monkeypatch) == "FAIL"
        instance.report_runless_asset_event(landed)
        assert evaluated(instance, 0, monkeypatch) == "PASS"  # a frame landed again


def test_the_hourly_tables_go_stale_after_half_an_hour_without_a_build_and_the_summary_after_its_deadline(
        tmp_path, monkeypatch):
    project_instance_home(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert evaluated(instance, 0, monkeypatch, DETECTIONS.key) in ("none", "UNKNOWN")
        built = dg.AssetMaterialization(DETECTIONS.key, partition="2026-11-28-10:00")
        instance.report_runless_asset_event(built)
        assert evaluated(instance, 60, monkeypatch, DETECTIONS.key) == "PASS"
        assert evaluated(instance, 900, monkeypatch, DETECTIONS.key) == "WARN"
        assert evaluated(instance, 1860, monkeypatch, DETECTIONS.key) == "FAIL"

        summed = dg.AssetMaterialization(DAILY_SUMMARY.key, partition="2026-11-27")
        instance.report_runless_asset_event(summed)
        assert evaluated(instance, 0, monkeypatch, DAILY_SUMMARY.key) == "PASS"
        # Two days on, a 02:00 deadline passed with the summary older than its midnight.
        assert evaluated(instance, 2 * 86400, monkeypatch, DAILY_SUMMARY.key) == "FAIL"
