import os
import subprocess
import sys

import dagster as dg


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
