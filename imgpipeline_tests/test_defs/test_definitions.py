import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_dg_loads_the_same_code_location():
    """`dg check defs` and `dg list defs` (the `[tool.dg]` project of pyproject.toml) load the code location
    of workspace.yaml: the same assets, sensors and jobs."""
    from imgpipeline.definitions import defs

    root = Path(__file__).parents[2]
    dg_bin = str(Path(sys.executable).with_name("dg"))
    check = subprocess.run([dg_bin, "check", "defs"], cwd=root, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All definitions loaded successfully" in check.stdout + check.stderr
    listed = subprocess.run([dg_bin, "list", "defs", "--json"], cwd=root, capture_output=True, text=True,
                            timeout=300)
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    repository = defs.get_repository_def()
    assert {a["asset_key"] for a in found["assets"]} == {
        k.to_user_string() for k in repository.asset_graph.get_all_asset_keys()}
    assert {s["name"] for s in found["sensors"]} == {s.name for s in repository.sensor_defs}
    assert {j["name"] for j in found["jobs"]} >= {"detect_frames", "follow_frames"}


def test_bad_setting_fails_the_load_with_its_fix():
    result = validate({"IMGPIPELINE_STORAGE_URI": "gs://bucket/x"})
    assert result.returncode != 0
    assert "unknown scheme 'gs'" in result.stdout + result.stderr


def test_resources_are_bound():
    from imgpipeline.definitions import defs

    assert isinstance(defs, dg.Definitions)
    assert {"kafka", "storage", "detector"} <= set(defs.resources)
    # Assets of one's own take the warehouse's tables through it (test_own_assets.py).
    from imgpipeline.defs.tables.io_manager import TablesIOManager

    assert isinstance(defs.resources["io_manager"], TablesIOManager)


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
    from imgpipeline.defs.automation import AutomationPolicy, automation_sensor
    from imgpipeline.defs.tables import FRAMES
    from imgpipeline.lib.run_priority import RunPriority

    # The definitions as a code server imports them, in a process of their own (this one's may have been
    # imported under another test's settings): the three sensors share the setting's one interval.
    show = ("import dagster as dg; from imgpipeline.definitions import defs; print(sorted("
            "(s.name, s.minimum_interval_seconds) for s in defs.get_repository_def().sensor_defs "
            "if isinstance(s, dg.AutomationConditionSensorDefinition)))")
    names = ("alerts_automation", "tracking_automation", "warehouse_automation")
    for setting, interval in ((None, 30), ("7", 7)):
        env = {k: v for k, v in os.environ.items() if k != "IMGPIPELINE_AUTOMATION_INTERVAL_S"}
        if setting:
            env["IMGPIPELINE_AUTOMATION_INTERVAL_S"] = setting
        out = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == repr([(name, interval) for name in names])
    priority = RunPriority()
    monkeypatch.delenv("IMGPIPELINE_AUTOMATION_INTERVAL_S", raising=False)
    assert automation_sensor("by_default", FRAMES.key, policy=AutomationPolicy.from_env(),
                             priority=priority).minimum_interval_seconds == 30
    monkeypatch.setenv("IMGPIPELINE_AUTOMATION_INTERVAL_S", "5")
    assert automation_sensor("fresher", FRAMES.key, policy=AutomationPolicy.from_env(),
                             priority=priority).minimum_interval_seconds == 5
    monkeypatch.setenv("IMGPIPELINE_AUTOMATION_INTERVAL_S", "0")
    with pytest.raises(ConfigError, match="IMGPIPELINE_AUTOMATION_INTERVAL_S"):
        AutomationPolicy.from_env()
