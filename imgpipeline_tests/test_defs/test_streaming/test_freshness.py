"""landing_metadata's freshness, as the daemon of the project's dagster.yaml evaluates it: unknown before a
frame landed, fresh after, a warning past 2 minutes without a landing, failed past 10."""

from __future__ import annotations

import dagster as dg

from imgpipeline.defs.tables import LANDING_ASSET
from imgpipeline_tests.test_lib.test_dagster_door import project_instance_home


def evaluated(instance: dg.DagsterInstance, later_s: float, monkeypatch) -> str:
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
    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="imgpipeline.definitions"))
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
        for _ in FreshnessDaemon().run_iteration(workspace):
            pass
    record = instance.get_freshness_state_records([LANDING_ASSET]).get(LANDING_ASSET)
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
