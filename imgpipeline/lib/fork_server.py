"""The fork server runs start from: a process that has imported the code location, opened the instance's
storage and loaded the detectors once, and forks for each run; the child then executes the run exactly as
`dagster api execute_run` does.

`ForkServerClient` is the daemon's side (one request line, one reply line); the server is
`python -m imgpipeline.lib.fork_server MODULE…`, the instance ref in INSTANCE_REF_ENV. When a source file
of the package or an env file changes, the next run starts from a fresh interpreter and the server
restarts, so no run executes stale code or settings.
"""

from __future__ import annotations

import importlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg

INSTANCE_REF_ENV = "IMGPIPELINE_FORK_SERVER_INSTANCE_REF"
REPLY_TIMEOUT_S = 10.0


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
        self._asking = threading.Lock()  # one request at a time: each reply is the last request's
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

        The request line is the niceness, a space and the run's arguments (JSON, one line). The launchers
        of a process share the server: one request at a time, from the readiness check to what its reply
        did (a server restarting, or closed for want of a reply, takes no request meanwhile)."""
        with self._asking:
            if not self.ready.is_set() or not self.alive():
                return None
            try:
                self.process.stdin.write(f"{nice} {args_json}\n")
                self.process.stdin.flush()
                reply = self._replies.get(timeout=REPLY_TIMEOUT_S).split()
            except (OSError, ValueError, queue.Empty):  # ValueError: its stdin closed meanwhile
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


def server_argv(modules: list[str]) -> list[str]:
    """The command that starts a fork server preloading `modules`."""
    return [sys.executable, "-m", "imgpipeline.lib.fork_server", *modules]


def serve(modules: list[str]) -> None:
    """Preload `modules`, say `ready`, then fork a run for each request line on stdin until it closes."""
    instance_ref = os.environ.pop(INSTANCE_REF_ENV, None)
    if not instance_ref or not modules:
        raise SystemExit(f"usage: {INSTANCE_REF_ENV}=<instance ref> "
                         "python -m imgpipeline.lib.fork_server MODULE…")
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
    from imgpipeline.lib.dagster_door import InstanceRef, deserialize_value, preload_cli, read_migrations_once

    preload_cli()  # what a run imports before its code location
    read_migrations_once()  # each run opens the instance's storage, and the run's event log

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
    from imgpipeline.environment import env_files
    from imgpipeline.paths import PACKAGE_DIR

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
