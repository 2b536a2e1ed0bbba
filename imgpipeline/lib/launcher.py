"""A run launcher whose runs start from a process that has already loaded the code location.

Dagster's default launcher asks the code server for a run; the code server spawns a fresh
interpreter that imports Dagster and the code location, then the run loads and first-runs its
detectors: ~4 s on 2 cores before the first frame. `ForkingRunLauncher` keeps a fork server
beside the daemon that has done all of that once, and forks it for each run; the child then
executes the run exactly as `dagster api execute_run` does.

A launch waits for a starting server (2 s on an idle machine; the default way would take as
long); runs of code locations the server has not loaded, or launched when it cannot start, go the
default way. The server itself is lib/fork_server.py; how nice a run's worker runs, lib/run_priority.py.
`fail_orphaned_starts` fails the runs a daemon that is gone left starting.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import dagster as dg

from imgpipeline.lib.fork_server import ForkServerClient
from imgpipeline.lib.run_priority import backfill_nice, run_nice

PID_TAG = "imgpipeline/run_worker_pid"
HOST_TAG = "imgpipeline/run_worker_host"
# The code server a run of a location served elsewhere was started by (host:port).
SERVER_TAG = "imgpipeline/run_worker_server"
# When the worker process started (services.process.started_at): a later process given the same pid
# (after a restart, or pids wrapping around) is not the run's worker.
STARTED_TAG = "imgpipeline/run_worker_started"
DEFAULT_PRELOAD = ["imgpipeline.definitions"]
# A launch waits this long for a starting server (a server that exits ends the wait at once): a run
# started the default way takes as long, and would compete with the server's warm-up for the same cores.
# On a busy machine the warm-up takes more than 15 s, and the daemon's first runs then went the default
# way, each starting an interpreter of its own beside the server's.
READY_TIMEOUT_S = 60.0
# Start times from /proc are whole clock ticks on a boot time in whole seconds: a process that started
# more than this after its worker's recorded start is another one.
START_SLACK_S = 2.0
# The fork servers this process started, by code location modules and instance ref.
_SERVERS: dict[tuple, ForkServerClient] = {}
_SERVERS_LOCK = threading.Lock()


class ForkingRunLauncher(dg.DefaultRunLauncher):
    """Forks each run from a warm fork server; falls back to the default launcher."""

    def __init__(self, inst_data=None, preload: list[str] | None = None):
        from imgpipeline.lib.dagster_door import read_migrations_once

        read_migrations_once()  # the daemon's process opens each run's event log as it launches it
        super().__init__(inst_data=inst_data)
        self.preload = list(preload or DEFAULT_PRELOAD)
        self._server_key: tuple | None = None
        self._watch = ServerWatch()

    @classmethod
    def config_type(cls):
        return {
            "preload": dg.Field(
                dg.Array(str), is_required=False, default_value=DEFAULT_PRELOAD,
                description="Code location modules the fork server imports ahead of runs.",
            )
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, preload=config_value.get("preload"))

    def launch_run(self, context) -> None:
        run = context.dagster_run
        pid = None
        if (server := served_elsewhere(context)) is not None:
            super().launch_run(context)  # the code server starts it, on its host
            self._instance.add_run_tags(run.run_id, {SERVER_TAG: server})
            return
        if self._forkable(run.job_code_origin):
            from imgpipeline.lib.dagster_door import ExecuteRunArgs, serialize_value

            args = ExecuteRunArgs(job_origin=run.job_code_origin, run_id=run.run_id,
                                  instance_ref=self._instance.get_ref())
            server = self._fork_server()
            if server.wait_ready(READY_TIMEOUT_S):
                nice = run_nice(run.tags, backfill_nice(run.tags))
                pid = server.fork_run(serialize_value(args), nice=nice)
        if pid is None:
            super().launch_run(context)
            return
        from imgpipeline.services.process import started_at

        started = started_at(pid)
        self._instance.add_run_tags(run.run_id, {
            PID_TAG: str(pid), HOST_TAG: socket.gethostname(),
            **({STARTED_TAG: f"{started:.2f}"} if started is not None else {})})
        self._run_ids.add(run.run_id)

    def warm(self, timeout_s: float = 0.0) -> bool:
        """Start the fork server if it is not up; True once it is ready (waits up to timeout_s)."""
        return self._fork_server().wait_ready(timeout_s)

    def _fork_server(self) -> ForkServerClient:
        """The process's fork server for this instance and code location: one, however many launchers
        the process builds (Dagster builds an instance's launcher when first asked for it, and the run
        queue's two launching threads can each build one at once)."""
        from imgpipeline.lib.dagster_door import serialize_value

        if self._server_key is None:
            self._server_key = (tuple(self.preload), serialize_value(self._instance.get_ref()))
        with _SERVERS_LOCK:
            server = _SERVERS.get(self._server_key)
            if server is None or not server.alive():
                server = _SERVERS[self._server_key] = ForkServerClient(self.preload, self._server_key[1])
            return server

    def _forkable(self, origin) -> bool:
        if origin is None:
            return False
        repository = origin.repository_origin
        return (getattr(repository.code_pointer, "module", None) in self.preload
                and os.path.realpath(repository.executable_path) == os.path.realpath(sys.executable))

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun):
        """Whether the process executing a started run is still there, for Dagster's run monitoring:
        a worker killed from outside (the OOM killer, `kill -9`) fails its run within one monitoring
        interval, and run retries launch it again. Forked runs carry their pid and its process's start
        time in tags; a run launched the default way reported its pid when its process started.

        Only a worker seen running on this host is alive: one recorded on another host (a daemon
        moved to another machine or pod, whose workers went with the old one), or a pid that now
        belongs to a later process (a restart, pids wrapping around), fails the run, so it is retried
        instead of holding its partition's run budget forever."""
        from imgpipeline.lib.dagster_door import CheckRunHealthResult, WorkerStatus
        from imgpipeline.services.process import alive, started_at

        if SERVER_TAG in run.tags:
            return self._server_health(run)
        here = socket.gethostname()
        host = run.tags.get(HOST_TAG, here)
        if host != here:
            return CheckRunHealthResult(
                WorkerStatus.FAILED, f"run worker recorded on host {host}, not on {here} where the daemon "
                "runs: no worker of this daemon executes it")
        pid, started_by = self._worker(run)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no worker pid reported yet")
        if not alive(pid):
            return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker {pid} is gone (killed or crashed)")
        started = started_at(pid)
        if started is not None and started_by is not None and started > started_by + START_SLACK_S:
            return CheckRunHealthResult(
                WorkerStatus.FAILED, f"run worker {pid} is gone: that pid now belongs to a process started "
                f"at {_clock(started)}, after the worker (by {_clock(started_by)})")
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker {pid} is running")

    def _server_health(self, run: dg.DagsterRun):
        """Whether the code server that started a run (its address as the launch recorded it) still
        executes it. A server that does not answer leaves its runs as they are for SERVER_SILENT_S (a busy
        or restarting server would otherwise lose them); silent longer, its host is taken as gone or cut
        off, and its runs fail (their followers' partitions went to other hosts' once their sessions
        lapsed)."""
        from imgpipeline.lib.dagster_door import CheckRunHealthResult, WorkerStatus

        client = self._get_grpc_client_for_termination(run.run_id)
        if client is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no code server recorded for it yet")
        where = f"{client.host}:{client.port or client.socket}"
        current, silent_s = self._watch.ask(where, client)
        if current is None and silent_s < SERVER_SILENT_S:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"the code server at {where} has not answered "
                                        f"for {silent_s:.0f} s: taken as running for {SERVER_SILENT_S:g} s")
        if current is None:
            return CheckRunHealthResult(WorkerStatus.FAILED, f"the code server at {where} has not answered "
                                        f"for {silent_s:.0f} s: its host is gone or cut off")
        if run.run_id in current:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"the code server at {where} executes it")
        return CheckRunHealthResult(WorkerStatus.FAILED, f"the code server at {where} no longer executes it")

    def _worker(self, run: dg.DagsterRun) -> tuple[int | None, float | None]:
        """The worker's pid and the latest time its process can have started: the recorded start time
        of a forked worker, else when a worker launched the default way reported its pid."""
        if PID_TAG in run.tags:
            started = run.tags.get(STARTED_TAG)
            return int(run.tags[PID_TAG]), float(started) if started else None
        for entry in self._instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            data = entry.dagster_event.engine_event_data if entry.dagster_event else None
            pid = data.metadata.get("pid") if data else None
            if pid is not None and (entry.message or "").startswith("Started process for run"):
                return int(pid.value), entry.timestamp
        return None, None

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id) if self.has_instance else None
        if run is None or PID_TAG not in run.tags:
            return super().terminate(run_id)
        if run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        if run.tags.get(HOST_TAG) != socket.gethostname():
            self._instance.report_engine_event(
                f"Run worker runs on {run.tags.get(HOST_TAG)}; cannot signal it from here.",
                dagster_run=run, cls=self.__class__)
            return False
        try:
            # The run's own interrupt handling turns this into a canceled run.
            os.kill(int(run.tags[PID_TAG]), signal.SIGINT)
        except ProcessLookupError:
            return False
        return True

    def dispose(self) -> None:
        with _SERVERS_LOCK:
            server = _SERVERS.pop(self._server_key, None) if self._server_key else None
        if server is not None:
            server.close()


def served_elsewhere(context) -> str | None:
    """The address of the code server a run's code location is served by when that server is on another
    host (a `grpc_server` entry of the workspace; on a site of several hosts), or None: the servers on
    this host (those `dagster dev` and the daemon start, on a socket) serve the fork server's code. Such a
    run executes where that server is, launched the default way, and its health is the server's to
    say."""
    from imgpipeline.lib.dagster_door import GrpcServerCodeLocationOrigin

    origin = context.dagster_run.remote_job_origin
    served = origin.repository_origin.code_location_origin if origin else None
    if not isinstance(served, GrpcServerCodeLocationOrigin) or served.socket or on_this_host(served.host):
        return None
    return f"{served.host}:{served.port}"


def on_this_host(host: str) -> bool:
    """Whether `host` names an address of this host (one a socket can be bound to here)."""
    try:
        addresses = {info[4][0]: info[0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    for address, family in addresses.items():
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((address, 0))
            return True
        except OSError:
            continue
    return False


# A code server silent this long (its host gone, or cut off from the daemon's) has its runs failed.
SERVER_SILENT_S = 60.0
# One answer of a code server serves every run it started for this long (a monitoring pass asks once per
# server, not once per run), and an answer is waited for this long (a host that drops packets would hold
# the pass for the client's own minute).
SERVER_ANSWER_S = 4.0
SERVER_WAIT_S = 10.0


class ServerWatch:
    """What each code server last said it executes, and since when it has not answered, in the
    daemon's memory (a daemon started again counts the silence afresh)."""

    def __init__(self):
        self.answers: dict[str, tuple[float, list[str] | None]] = {}
        self.silent_since: dict[str, float] = {}

    def ask(self, where: str, client) -> tuple[list[str] | None, float]:
        """The runs the server executes (None: it does not answer), and for how long it has not."""
        import time

        from imgpipeline.lib.dagster_door import deserialize_value

        now = time.monotonic()
        asked, current = self.answers.get(where, (0.0, None))
        if now - asked >= SERVER_ANSWER_S:
            answer: list = []

            def call() -> None:
                try:
                    answer.append(client.get_current_runs())
                except Exception:  # noqa: BLE001, S110 - grpc's errors: it does not answer
                    pass

            asking = threading.Thread(target=call, daemon=True)
            asking.start()
            asking.join(SERVER_WAIT_S)
            current = list(deserialize_value(answer[0]).current_runs) if answer else None
            self.answers[where] = (time.monotonic(), current)
        if current is not None:
            self.silent_since.pop(where, None)
            return current, 0.0
        return None, now - self.silent_since.setdefault(where, now)


def fail_orphaned_starts(instance: dg.DagsterInstance) -> list[str]:
    """Fail the runs left starting by a daemon that is gone, so run retries launch them again now.

    Dagster's run monitoring asks the launcher about started runs only: a run whose forked worker died
    before it reported its start (the daemon killed with its fork server and runs) would wait the whole
    start timeout (`run_monitoring.start_timeout_seconds`, 60 s in dagster.yaml) before it is retried.
    Called before a daemon starts; a run whose worker is still running, or that has no worker yet (that
    one is the start timeout's), is left alone. The ids of the runs failed."""
    from imgpipeline.lib.dagster_door import WorkerStatus

    launcher = instance.run_launcher
    if not isinstance(launcher, ForkingRunLauncher):
        return []
    failed = []
    for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING])):
        if PID_TAG not in run.tags:
            continue
        health = launcher.check_run_worker_health(run)
        if health.status == WorkerStatus.FAILED:
            instance.report_run_failed(run, f"Run never started: {health.msg}, with the daemon that "
                                       "launched it.")
            failed.append(run.run_id)
    return failed


def _clock(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
