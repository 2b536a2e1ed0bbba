"""The Dagster instance on PostgreSQL: `imgpipeline services up --instance postgres` as a user runs it,
settings that cannot work refused at load, and the server SIGKILLed under a working daemon."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from imgpipeline.defs.records.reader import Landing
from imgpipeline.lib.instance import InstanceSettings, open_instance, url_env
from imgpipeline.resources import StorageResource
from imgpipeline.resources.settings import env_name
from imgpipeline.services import LocalServices, Postgres
from imgpipeline.services.postgres import SCRAM_ITERATIONS, USER, postgres_bin
from imgpipeline_tests.conftest import require_tool
from imgpipeline_tests.pipeline import landing_records, produce, stop_at_once, video_backlog, wait_for

pytestmark = [pytest.mark.integration]
KIND = env_name(InstanceSettings, "kind")


@pytest.fixture(autouse=True)
def postgresql_installed():
    """Every test here runs a PostgreSQL server of its own."""
    installed = postgres_bin("initdb") is not None
    require_tool(None if installed else "postgresql is not installed: apt-get install postgresql")


def cli(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgpipeline.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def clean_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (KIND, url_env(), "DAGSTER_HOME")}
    return {**env, "IMGPIPELINE_HOME": str(tmp_path)}


@pytest.mark.long(0.5)
def test_services_up_with_the_instance_on_postgres(tmp_path):
    env = clean_env(tmp_path)
    up = cli("services", "up", "--instance", "postgres", env=env)
    state = tmp_path / ".imgpipeline"
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        assert "postgres ready at 127.0.0.1:" in up.stdout
        env_file = state / "services.env"
        settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                        if "=" in line and not line.startswith("#"))
        assert settings[KIND] == "postgres"
        password = json.loads((state / "services" / "postgres" / "login.json").read_text())["password"]
        assert f":{password}@127.0.0.1:" in settings[url_env()]
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert password not in up.stdout + up.stderr
        # The login is the password, its verifier stretched SCRAM_ITERATIONS rounds: a wrong one is refused.
        server = Postgres(state / "services" / "postgres")
        kept = server.sql(server.ports, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{USER}'")
        assert kept.startswith(f"SCRAM-SHA-256${SCRAM_ITERATIONS}:"), kept[:20]
        assert psycopg2.connect(settings[url_env()]).close() is None
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(settings[url_env()].replace(f":{password}@", ":not-it@"))

        # The instance the CLI and `dagster dev` open: the project's settings plus PostgreSQL storage.
        home = state / "dagster"
        os.environ[url_env()] = settings[url_env()]
        try:
            from imgpipeline.services.dagster_dev import dagster_home

            os.environ[KIND] = "postgres"
            assert dagster_home(state) == home
            text = (home / "dagster.yaml").read_text()
            assert not (home / "dagster.yaml").is_symlink() and "ForkingRunLauncher" in text
            assert f"env: {url_env()}" in text and password not in text
            with open_instance(home) as instance:
                assert type(instance.run_storage).__name__ == "PostgresRunStorage"
                result = dg.materialize([probe], instance=instance)
                assert result.success
                run_id = result.run_id
        finally:
            os.environ.pop(url_env(), None)
            os.environ.pop(KIND, None)
        service = Postgres(state / "services" / "postgres")
        assert service.sql(service.ports, f"SELECT status FROM runs WHERE run_id = '{run_id}'",
                           database="dagster") == "SUCCESS"
        status = cli("services", "status", env=env)
        assert "postgres healthy at 127.0.0.1:" in status.stdout
        port = service.ports["port"]
        report = cli("status", env=env)
        assert f"runs     instance postgresql://127.0.0.1:{port}/dagster; 0 failed" in report.stdout
        assert password not in report.stdout + report.stderr
        # The instance's server down: said, with the rest of the report.
        assert service.stop()
        report = cli("status", env=env)
        assert report.returncode == 1
        assert f"runs     instance postgresql://127.0.0.1:{port}/dagster: UNREACHABLE" in report.stdout
        assert f"instance: cannot read runs from postgresql://127.0.0.1:{port}/dagster" in report.stdout
        assert "storage  file://" in report.stdout and password not in report.stdout + report.stderr
    finally:
        down = cli("services", "down", env=env)
    assert down.returncode == 0 and "postgres stopped" in down.stdout, down.stdout
    assert not (state / "services.env").exists()
    # Back on SQLite: the instance file is the link to the project's dagster.yaml again.
    from imgpipeline.services.dagster_dev import dagster_home

    assert (dagster_home(state) / "dagster.yaml").is_symlink()
    shutil.rmtree(Postgres(state / "services" / "postgres").data, ignore_errors=True)


@dg.asset
def probe() -> int:
    return 1


@pytest.mark.parametrize("values, expected", [
    ({KIND: "mysql"}, "IMGPIPELINE_INSTANCE='mysql' is not known; use one of sqlite, postgres"),
    ({KIND: "postgres"}, "IMGPIPELINE_INSTANCE=postgres needs IMGPIPELINE_POSTGRES_URL"),
    ({KIND: "postgres", "IMGPIPELINE_POSTGRES_URL": "mysql://u:hunter2secret@db/dagster"},
     "IMGPIPELINE_POSTGRES_URL is not a PostgreSQL URL"),
    ({KIND: "postgres", "IMGPIPELINE_POSTGRES_URL": "postgresql://u:hunter2secret@db:5432"},
     "IMGPIPELINE_POSTGRES_URL is not a PostgreSQL URL"),
    ({KIND: "postgres", "IMGPIPELINE_POSTGRES_URL": "postgresql://u:hunter2secret@db:99999/dagster"},
     "IMGPIPELINE_POSTGRES_URL has a port that is not a number from 1 to 65535"),
    ({KIND: "postgres", "IMGPIPELINE_POSTGRES_URL": "postgresql://u:hunter2secret#1@db:5432/dagster"},
     "percent-encoded"),
])
def test_instance_settings_that_cannot_work_fail_at_load(tmp_path, values, expected):
    """`imgpipeline check` stops on them with what to fix, and never repeats the URL's password."""
    result = cli("check", env={**clean_env(tmp_path), **values}, timeout=120)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "hunter2secret" not in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_a_dagster_yaml_of_ones_own_is_left_alone_unless_it_cannot_do_what_is_asked(tmp_path):
    from imgpipeline import ConfigError
    from imgpipeline.lib.instance import write_instance_yaml

    home, project = tmp_path / "home", tmp_path / "dagster.yaml"
    home.mkdir()
    project.write_text("telemetry:\n  enabled: false\n")
    postgres = InstanceSettings(kind="postgres", postgres_url="postgresql://u:pw@db:5432/dagster")
    own = home / "dagster.yaml"
    own.write_text("telemetry:\n  enabled: true\n")
    assert write_instance_yaml(home, project, InstanceSettings()) == own and "true" in own.read_text()
    with pytest.raises(ConfigError, match="is a file of your own whose storage is not PostgreSQL"):
        write_instance_yaml(home, project, postgres)
    own.write_text("storage:\n  postgres:\n    postgres_url: {env: IMGPIPELINE_POSTGRES_URL}\n")
    write_instance_yaml(home, project, postgres)
    assert own.read_text().startswith("storage:") and not own.is_symlink()
    # Ours: switched both ways, the password in neither.
    own.unlink()
    write_instance_yaml(home, project, postgres)
    assert "enabled: false" in own.read_text() and "env: IMGPIPELINE_POSTGRES_URL" in own.read_text()
    assert ":pw@" not in own.read_text()
    write_instance_yaml(home, project, InstanceSettings())
    assert own.is_symlink() and own.resolve() == project.resolve()


@pytest.mark.long(1)
def test_postgres_killed_under_a_working_daemon_loses_and_doubles_nothing(kafka, tmp_path, monkeypatch):
    """SIGKILL the instance's server while runs detect, start it again 5 s later: every frame lands
    exactly once, and every run ends."""
    server = Postgres(tmp_path / "postgres")
    server.start()
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    for name, value in {KIND: "postgres", url_env(): server.url(server.ports),
                        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                        "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic,
                        "IMGPIPELINE_STORAGE_URI": storage.uri,
                        # runs of 40 whatever the backlog: the first lands long before the last
                        "IMGPIPELINE_MAX_BATCH": "40", "IMGPIPELINE_MAX_BACKLOG_BATCH": "40",
                        "IMGPIPELINE_MAX_WAIT_S": "0",
                        "IMGPIPELINE_SENSOR_INTERVAL_S": "1", "IMGPIPELINE_HOME": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    frames = video_backlog(300, "pg-cam")
    produce(kafka, storage, tmp_path, frames)
    local = LocalServices(tmp_path / ".imgpipeline")
    local.up_daemon()
    try:
        wait_for(lambda: landing_records(storage), 180, "the first run's landing file")
        assert 0 < len(landing_records(storage)) < len(frames), "the kill must land mid-work"
        os.killpg(server.pid, signal.SIGKILL)
        time.sleep(5)  # scenario: the server stays away five seconds
        server.start()
        landing = Landing(storage.open())
        wait_for(lambda: len({r.frame_id for r in landing.records()}) >= len(frames), 420,
                 "every frame to land", every_s=2)
        with open_instance(local.dagster.dagster_home) as instance:

            def finished() -> list[dg.DagsterRun] | None:
                found = instance.get_runs(dg.RunsFilter(job_name="detect_frames"))
                return found if found and all(run.is_finished for run in found) else None

            runs = wait_for(finished, 120, "every run to finish", every_s=1)
    finally:
        stop_at_once(local.dagster)
        server.stop()
        shutil.rmtree(server.data, ignore_errors=True)
    counts = Counter(r.frame_id for r in landing_records(storage))
    print(f"postgres SIGKILLed mid-work: {len(frames)} frames, {len(counts)} landed, "
          f"runs {dict(Counter(run.status.value for run in runs))}")
    assert sorted(counts) == sorted(f.frame_id for f in frames)
    assert set(counts.values()) == {1}
    assert all(run.is_finished for run in runs)
