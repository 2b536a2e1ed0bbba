"""A run launcher whose runs start from a process that has already loaded the code location.

Dagster's default launcher asks the code server for a run; the code server spawns a fresh
interpreter that imports Dagster and the code location, then the run loads and first-runs its
detectors: ~4 s on 2 cores before the first frame. `ForkingRunLauncher` keeps a fork server
beside the daemon that has done all of that once, and forks it for each run; the child then
executes the run exactly as `dagster api execute_run` does.

A launch waits for a starting server (2 s on an idle machine; the default way would take as
long); runs of code locations the server has not loaded, or launched when it cannot start, go the
default way. When a source file of the package or an env file changes, the next run starts from
a fresh interpreter and the server restarts, so no run executes stale code or settings.

A run tagged `imgpipeline/nice` N runs that much nicer than the daemon (its steps' processes too): the
hourly chain's automation runs are, so that on a busy machine detection gets the CPU first; so is a
backfill's run that names no niceness (one launched from the UI), as nice as the hourly chain's.
"""

from __future__ import annotations

import importlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
from pydantic import BaseModel, ConfigDict

from imgpipeline.resources.settings import FromEnv, setting

PID_TAG = "imgpipeline/run_worker_pid"
HOST_TAG = "imgpipeline/run_worker_host"
# When the worker process started (services.process.started_at): a later process given the same pid
# (after a restart, or pids wrapping around) is not the run's worker.
STARTED_TAG = "imgpipeline/run_worker_started"
# How much nicer than the daemon a run's worker runs (0 to 19): the automation sensors tag their runs.
NICE_TAG = "imgpipeline/nice"
DEFAULT_PRELOAD = ["imgpipeline.definitions"]
INSTANCE_REF_ENV = "IMGPIPELINE_FORK_SERVER_INSTANCE_REF"
REPLY_TIMEOUT_S = 10.0
# A launch waits this long for a starting server: a run started the default way takes as long,
# and would compete with the server's warm-up for the same cores.
READY_TIMEOUT_S = 15.0
# Start times from /proc are whole clock ticks on a boot time in whole seconds: a process that started
# more than this after its worker's recorded start is another one.
START_SLACK_S = 2.0


BACKFILL_TAG = "dagster/backfill"  # on each run a backfill launched


class RunPriority(FromEnv, BaseModel):
    """How much the runs that can wait yield the CPU to detection."""

    model_config = ConfigDict(extra="forbid")

    yielding: int = setting(
        "IMGPIPELINE_AUTOMATION_NICE", 19,
        "how much nicer (Unix niceness, 0 to 19) than the daemon the runs that can wait run: the automation "
        "sensors' (the hours' tables, tracks and alerts), re-detections and any backfill's: on a busy "
        "machine they take only the CPU detection leaves (at 10 they still took a tenth of a core from a "
        "draining backlog) and catch up when it is drained; alerts are raised live by the stream "
        "meanwhile; 0: the same priority",
        ge=0, le=19)


class ForkingRunLauncher(dg.DefaultRunLauncher):
    """Forks each run from a warm fork server; falls back to the default launcher."""

    def __init__(self, inst_data=None, preload: list[str] | None = None):
        super().__init__(inst_data=inst_data)
        self.preload = list(preload or DEFAULT_PRELOAD)
        self._server: ForkServerClient | None = None
        self._lock = threading.Lock()

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
        if self._forkable(run.job_code_origin):
            from imgpipeline.lib.dagster_door import ExecuteRunArgs, serialize_value

            args = ExecuteRunArgs(job_origin=run.job_code_origin, run_id=run.run_id,
                                  instance_ref=self._instance.get_ref())
            with self._lock:
                server = self._fork_server()
            if server.wait_ready(READY_TIMEOUT_S):
                with self._lock:
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
        with self._lock:
            server = self._fork_server()
        return server.wait_ready(timeout_s)

    def _fork_server(self) -> ForkServerClient:
        if self._server is None or not self._server.alive():
            from imgpipeline.lib.dagster_door import serialize_value

            self._server = ForkServerClient(self.preload, serialize_value(self._instance.get_ref()))
        return self._server

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
        if self._server is not None:
            self._server.close()


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


class ForkServerClient:
    """The daemon's side of the fork server: one request line, one reply line."""

    def __init__(self, modules: list[str], instance_ref: str):
        # The instance ref goes by environment, not argv: `ps` shows argv to everyone.
        self.process = subprocess.Popen(
            server_argv(modules),
            env={**os.environ, INSTANCE_REF_ENV: instance_ref},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.ready = threading.Event()
        self._replies: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, name="fork-server-replies", daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.strip() == "ready":
                self.ready.set()
            else:
                self._replies.put(line.strip())
        self.ready.clear()
        self._replies.put("")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout_s: float) -> bool:
        """True once the server is ready; False at the timeout or as soon as it has exited."""
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or not self.alive():
                return False
        return True

    def fork_run(self, args_json: str, nice: int = 0) -> int | None:
        """The pid of the forked run, or None when the server is not ready (launch the default way).

        The request line is the niceness, a space and the run's arguments (JSON, one line)."""
        if not self.ready.is_set() or not self.alive():
            return None
        try:
            self.process.stdin.write(f"{nice} {args_json}\n")
            self.process.stdin.flush()
            reply = self._replies.get(timeout=REPLY_TIMEOUT_S).split()
        except (OSError, queue.Empty):
            self.close()
            return None
        if not reply or not reply[0].isdigit():
            return None
        if "restarting" in reply:
            self.ready.clear()  # the server loads the changed code before it forks again
        return int(reply[0])

    def close(self) -> None:
        self.ready.clear()
        if self.alive():
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()


# The server side: `python -m imgpipeline.lib.launcher MODULE…`, the instance ref in INSTANCE_REF_ENV.


def backfill_nice(tags: dict[str, str]) -> int:
    """How nice a backfill's run that names no niceness runs: the setting, read then (an env file edited
    since the code location loaded and now wrong leaves the default, and the run launches)."""
    if NICE_TAG in tags or BACKFILL_TAG not in tags:
        return 0
    from imgpipeline import ConfigError

    try:
        return RunPriority.from_env().yielding
    except ConfigError:
        return RunPriority.model_fields["yielding"].default


def run_nice(tags: dict[str, str], backfill: int = 0) -> int:
    """The niceness a run's tags ask for: 0 to 19, 0 when not a number; when they name none, `backfill`
    for a backfill's run, else 0."""
    if NICE_TAG not in tags:
        return min(19, max(0, backfill)) if BACKFILL_TAG in tags else 0
    try:
        return min(19, max(0, int(tags[NICE_TAG])))
    except ValueError:
        return 0


def server_argv(modules: list[str]) -> list[str]:
    return [sys.executable, "-m", "imgpipeline.lib.launcher", *modules]


def serve(modules: list[str]) -> None:
    instance_ref = os.environ.pop(INSTANCE_REF_ENV, None)
    if not instance_ref or not modules:
        raise SystemExit(f"usage: {INSTANCE_REF_ENV}=<instance ref> "
                         "python -m imgpipeline.lib.launcher MODULE…")
    # Loading the code location exports secrets found only in env files into os.environ
    # (resources.settings): a restart must not inherit them.
    environment = dict(os.environ)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the runs; the daemon closes stdin
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished runs are reaped by the kernel
    warm_up(instance_ref, modules)
    watched = _watched_files()
    loaded_state = _state(watched)
    print("ready", flush=True)
    for line in sys.stdin:
        nice, _, args_json = line.strip().partition(" ")
        stale = _state(watched) != loaded_state
        pid = os.fork()
        if pid == 0:
            _run_child(args_json, fresh_env=environment if stale else None, nice=int(nice))
        print(f"{pid} restarting" if stale else pid, flush=True)
        if stale:
            os.execve(sys.executable, server_argv(modules), {**environment, INSTANCE_REF_ENV: instance_ref})


def warm_up(instance_ref: str, modules: list[str]) -> None:
    """Everything a run would otherwise do before its first frame that can be done once.

    Stays single-threaded where it matters: a forked child has only the thread that forked it.
    """
    import cv2

    cv2.setNumThreads(1)  # no OpenCV thread pool: children would wait on threads they lack
    loaded = [importlib.import_module(name) for name in modules]
    from imgpipeline.lib.dagster_door import InstanceRef, deserialize_value, preload_cli

    preload_cli()  # what a run imports before its code location

    # The instance's storage stack (SQLAlchemy, Alembic, the event log): ~1.3 s of imports.
    with dg.DagsterInstance.from_ref(deserialize_value(instance_ref, InstanceRef)) as instance:
        instance.get_run_records(limit=1)
        instance.compute_log_manager  # noqa: B018
    for module in loaded:
        for defs in [v for v in vars(module).values() if isinstance(v, dg.Definitions)]:
            for resource in (defs.resources or {}).values():
                if hasattr(resource, "preload"):
                    try:
                        resource.preload()
                    except Exception as error:  # the run itself reports it, with context
                        print(f"fork server: not preloading {type(resource).__name__}: {error}",
                              file=sys.stderr)


def _watched_files() -> list[Path]:
    from imgpipeline.paths import PACKAGE_DIR, env_files

    files = {Path(m.__file__).resolve() for m in list(sys.modules.values())
             if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(PACKAGE_DIR)}
    return sorted(files) + env_files()


def _state(files: list[Path]) -> list[int | None]:
    return [f.stat().st_mtime_ns if f.exists() else None for f in files]


def _run_child(args_json: str, *, fresh_env: dict[str, str] | None, nice: int = 0) -> None:
    """Execute the run in this forked child, or with fresh_env in a new interpreter; never returns."""
    code = 1
    try:
        if nice:
            os.nice(nice)  # before the run starts anything: its step processes inherit it
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(2, 1)  # the run logs where the daemon does, never into the reply pipe
        argv = ["dagster", "api", "execute_run"]
        if fresh_env is not None:  # the run's args by environment, as `dagster api execute_run` reads them
            os.execve(sys.executable, [sys.executable, "-m", *argv],
                      {**fresh_env, "DAGSTER_EXECUTE_RUN_ARGS": args_json})
        import random

        random.seed()
        from imgpipeline.lib.dagster_door import dagster_cli_main

        sys.argv = [*argv, args_json]
        dagster_cli_main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    serve(sys.argv[1:])


def _clock(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
