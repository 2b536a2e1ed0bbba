"""`dagster dev` (webserver, daemon, code server) in the background, for the demo and the UI; or the
daemon alone (`dagster-daemon run`: sensors, schedules, runs and their code server, no webserver), for
the benchmarks and a host no one browses."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from imgpipeline.paths import HOME_ENV
from imgpipeline.services.base import LocalService, answers_http
from imgpipeline.services.process import started_at

BEATING_S = 90.0  # a daemon found running is healthy while its daemons beat within this (three beats)


class DagsterDev(LocalService):
    """The UI and the daemon that runs frames_sensor and the runs it launches (the fast lane's
    follow_frames run, or detect_frames runs per batch)."""

    name = "dagster"
    start_timeout_s = 120.0
    preferred_ports = {"port": 3000}

    def __init__(self, workdir: Path, dagster_home: Path, project_home: Path):
        super().__init__(workdir)
        self.dagster_home = dagster_home
        self.project_home = project_home
        self.headless = False  # the next start: the daemon alone, with no port (LocalServices.up_daemon)
        self._starting, self._kept = False, None  # while it starts: the instance its looks share

    @property
    def port_names(self) -> tuple[str, ...]:
        return () if self.headless else ("port",)

    def argv(self, ports: dict[str, int]) -> list[str]:
        if not ports:
            return daemon_argv()
        return dagster_dev_argv("127.0.0.1", ports["port"])

    def process_env(self) -> dict[str, str]:
        return {**dagster_env(self.dagster_home, self.project_home), "PYTHONUNBUFFERED": "1"}

    def address(self, ports: dict[str, int]) -> str:
        return f"http://127.0.0.1:{ports['port']}"

    def ready(self, ports: dict[str, int]) -> bool:
        """The UI answers (or, alone, every daemon has beaten since it started) and run retries watch."""
        if ports and not answers_http(self.address(ports) + "/server_info"):
            return False
        try:
            instance = self._instance_to_look_in()
        except Exception:  # noqa: BLE001 - the instance's storage not answering yet: not ready
            return False
        try:
            if not ports:  # beaten since this process started (a daemon killed before it beat too), lately
                started = started_at(self.pid)
                if started is None or not daemons_beating(instance, max(started, time.time() - BEATING_S)):
                    return False
            return retries_armed(instance)
        except Exception:  # noqa: BLE001 - the storage stopped answering: not ready
            return False
        finally:
            if instance is not self._kept:
                instance.dispose()

    def _instance_to_look_in(self):
        """The instance, opened once for all the looks of a start (opened for each look, four a second,
        a look took ten times the CPU), and for each look otherwise."""
        from imgpipeline.lib.instance import open_instance

        if not self._starting:
            return open_instance(self.dagster_home)
        if self._kept is None:
            self._kept = open_instance(self.dagster_home)
        return self._kept

    def _start_on(self, ports: dict[str, int]) -> dict:
        self._starting = True
        try:
            return super()._start_on(ports)
        finally:
            self._starting = False
            if self._kept is not None:
                self._kept.dispose()
                self._kept = None

    def status(self) -> dict:
        status = super().status()
        if status["running"] and not self.ports:  # the daemon alone: healthy without an address
            status["healthy"] = self.ready({})
        return status

    def prepare(self, ports: dict[str, int]) -> None:
        """Runs a killed daemon left starting fail at once (and are retried), not after the start timeout."""
        from imgpipeline.lib.instance import open_instance
        from imgpipeline.lib.launcher import fail_orphaned_starts

        try:
            with open_instance(self.dagster_home) as instance:
                fail_orphaned_starts(instance)
        except Exception:  # noqa: BLE001 - storage not answering: `dagster dev` says so itself; the timeout stays
            pass


def retries_armed(instance) -> bool:
    """Whether the daemon watches for failed runs, so that run retries can follow them.

    Dagster's run-retry daemon starts, on an instance it has never run on, from the newest event of
    its first tick: a run that failed before then (a worker killed in the first seconds of a fresh
    `dagster dev`) would never be retried, only repaired minutes later by repair_sensor. `dagster dev`
    counts as ready once that daemon has recorded where it reads from (at once on an instance it has
    run on before), or straight away where the instance has run retries off.
    """
    from imgpipeline.lib.dagster_door import retry_cursor_key

    key = retry_cursor_key()  # the daemon's own name for its cursor
    return not instance.run_retries_enabled or bool(
        instance.daemon_cursor_storage.get_cursor_values({key}).get(key))


def daemons_beating(instance, since: float) -> bool:
    """Whether every daemon the instance needs has beaten since `since` (each beats as it starts, then
    every 30 s)."""
    beats = instance.get_daemon_heartbeats()
    return all(kind in beats and beats[kind].timestamp >= since
               for kind in instance.get_required_daemon_types())


def daemon_argv() -> list[str]:
    """`dagster-daemon run` for this code location on a code server kept for its life, as `dagster dev`
    runs its own less the webserver (services/headless.py), with this interpreter (no venv on PATH
    needed)."""
    return [sys.executable, "-m", "imgpipeline.services.headless"]


def dagster_dev_argv(host: str, port: int) -> list[str]:
    """`dagster dev` for this code location, with this interpreter (no venv on PATH needed)."""
    return [sys.executable, "-m", "dagster", "dev", "-m", "imgpipeline.definitions",
            "-h", host, "-p", str(port)]


def dagster_env(home: Path, project_home: Path) -> dict[str, str]:
    """The environment of `dagster dev`: its instance (and the PostgreSQL URL it reads, when it is on
    PostgreSQL; the S3 region and keys its run logs are written and read with, when they are in S3), and
    (run workers start in other folders) where the project's state lives."""
    from imgpipeline.lib.instance import instance_env

    return {"DAGSTER_HOME": str(home), HOME_ENV: str(project_home), **instance_env()}


def dagster_home(state: Path) -> Path:
    """`.imgpipeline/dagster`: DAGSTER_HOME, holding the project's dagster.yaml (a link to it), with the
    PostgreSQL storage block when the instance is set to PostgreSQL and the S3 compute logs block when the
    storage root is on S3 (lib/instance.py)."""
    from imgpipeline.lib.instance import InstanceSettings, write_instance_yaml
    from imgpipeline.resources import StorageResource

    home = state / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    candidates = (state.parent / "dagster.yaml", Path(__file__).resolve().parents[2] / "dagster.yaml")
    project_yaml = next((source for source in candidates if source.exists()), None)
    write_instance_yaml(home, project_yaml, InstanceSettings.from_env(), StorageResource.from_env())
    return home
