"""How nice a run's worker runs: the niceness its tags ask for, and the tags the automation sensors give
their runs. Forked runs running that nice: test_launcher.py."""

from __future__ import annotations

import dagster as dg

from imgpipeline.lib.run_priority import BACKFILL_TAG, NICE_TAG, RunPriority, run_nice


def test_a_runs_niceness_tag_is_read_within_bounds():
    assert [run_nice(tags) for tags in ({}, {NICE_TAG: "10"}, {NICE_TAG: "99"}, {NICE_TAG: "-5"},
                                         {NICE_TAG: "ten"}, {NICE_TAG: ""})] == [0, 10, 19, 0, 0, 0]
    backfill = {BACKFILL_TAG: "abc"}
    assert [run_nice(tags, 19) for tags in ({}, backfill, {**backfill, NICE_TAG: "3"})] == [0, 19, 3]


def test_the_automation_sensors_tag_their_runs_to_yield_unless_set_to_0(monkeypatch):
    from imgpipeline.defs.automation import AutomationPolicy, automation_sensor

    def sensor():  # as the code location builds it, from the settings
        return automation_sensor("s", dg.AssetKey("a"), policy=AutomationPolicy(),
                                 priority=RunPriority.from_env())

    assert sensor().run_tags == {NICE_TAG: "19"}
    monkeypatch.setenv("IMGPIPELINE_AUTOMATION_NICE", "0")
    assert NICE_TAG not in sensor().run_tags
