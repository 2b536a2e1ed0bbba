import os
import subprocess
import sys

import dagster as dg
import pytest


def validate(env_overrides: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_overrides}
    return subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        env=env, capture_output=True, text=True, timeout=300,
    )


def test_definitions_load_like_dagster_dev():
    result = validate({})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "imgpipeline" in result.stdout + result.stderr


def test_bad_setting_fails_the_load_with_its_fix():
    result = validate({"IMGPIPELINE_STORAGE_URI": "gs://bucket/x"})
    assert result.returncode != 0
    assert "unknown scheme 'gs'" in result.stdout + result.stderr


def test_resources_are_bound():
    from imgpipeline.definitions import defs

    assert isinstance(defs, dg.Definitions)
    assert {"kafka", "storage", "detector"} <= set(defs.resources)


def test_the_daily_schedules_ask_for_the_day_before():
    from datetime import UTC, datetime

    import dagster as dg

    from imgpipeline.definitions import defs

    repository = defs.get_repository_def()
    for name in ("daily_summary_schedule", "daily_report_schedule"):
        context = dg.build_schedule_context(
            repository_def=repository, scheduled_execution_time=datetime(2026, 12, 1, 0, 45, tzinfo=UTC))
        [request] = repository.get_schedule_def(name).evaluate_tick(context).run_requests
        assert (request.partition_key, request.run_key) == ("2026-11-30", "2026-11-30"), name


def test_the_automation_sensors_look_as_often_as_the_setting_says(monkeypatch):
    from imgpipeline import ConfigError
    from imgpipeline.definitions import defs
    from imgpipeline.defs.automation import automation_sensor
    from imgpipeline.defs.tables import FRAMES

    # The definitions were built when this process first imported them, under whatever setting it had
    # then (another test in the same worker may have set it): the three sensors share that one interval.
    sensors = {s.name: s.minimum_interval_seconds for s in defs.get_repository_def().sensor_defs
               if isinstance(s, dg.AutomationConditionSensorDefinition)}
    assert set(sensors) == {"warehouse_automation", "tracking_automation", "alerts_automation"}
    assert len(set(sensors.values())) == 1
    monkeypatch.delenv("IMGPIPELINE_AUTOMATION_INTERVAL_S", raising=False)
    assert automation_sensor("by_default", FRAMES.key).minimum_interval_seconds == 30
    monkeypatch.setenv("IMGPIPELINE_AUTOMATION_INTERVAL_S", "5")
    assert automation_sensor("fresher", FRAMES.key).minimum_interval_seconds == 5
    monkeypatch.setenv("IMGPIPELINE_AUTOMATION_INTERVAL_S", "0")
    with pytest.raises(ConfigError, match="IMGPIPELINE_AUTOMATION_INTERVAL_S"):
        automation_sensor("never", FRAMES.key)
