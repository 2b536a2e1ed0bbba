"""The command line as a person runs it: settings shown without secrets, `dev` from the venv's script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from imgpipeline.cli.main import main
from imgpipeline.services.process import free_port


def test_settings_show_values_but_never_a_secret(monkeypatch, capsys):
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("IMGPIPELINE_MAX_BATCH", "250")
    assert main(["settings"]) == 0
    shown = capsys.readouterr().out
    assert "hunter2-secret" not in shown
    lines = {line.split()[0]: line for line in shown.splitlines()}
    assert "(set, secret)" in lines["KAFKA_SASL_PASSWORD"]
    assert " 250 " in lines["IMGPIPELINE_MAX_BATCH"] and "default `500`" in lines["IMGPIPELINE_MAX_BATCH"]


def test_a_bad_setting_stops_a_command_with_its_fix(monkeypatch, capsys):
    monkeypatch.setenv("IMGPIPELINE_SENSOR_WATCH_S", "9")
    assert main(["settings"]) == 2
    assert "IMGPIPELINE_SENSOR_WATCH_S=9 is too long" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.long(0.4)
def test_dev_runs_from_the_venv_script_without_the_venv_on_path(tmp_path):
    """`.venv/bin/imgpipeline dev`, as the README calls the tool, with no activated venv."""
    script = Path(sys.executable).parent / "imgpipeline"
    port = free_port()
    env = {**os.environ, "PATH": "/usr/bin:/bin", "IMGPIPELINE_HOME": str(tmp_path)}
    process = subprocess.Popen([str(script), "dev", "--port", str(port)], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as answer:
                    assert answer.status == 200
                    return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"dagster dev did not answer (exit code {process.poll()}): "
                    f"{process.stderr.read().decode()[-2000:] if process.poll() is not None else ''}")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
