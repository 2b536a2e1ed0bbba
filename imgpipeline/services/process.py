"""Background processes with pid files: start detached, check, stop (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

# Processes this interpreter started, so that stopping them can reap them (no zombies).
_children: dict[int, subprocess.Popen] = {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PortClaims:
    """Ports a starting service has chosen, claimed (a lock file per port, held until released) so that
    another process choosing at the same moment passes them over; a port is claimable when nothing
    listens on it and no one else claims it."""

    def __init__(self):
        import tempfile

        self.folder = Path(tempfile.gettempdir()) / "imgpipeline-ports"
        self.held: dict[int, object] = {}

    def claim(self, port: int) -> bool:
        import fcntl

        if port in self.held:
            return True
        self.folder.mkdir(exist_ok=True)
        handle = open(self.folder / f"{port}.lock", "w")  # noqa: SIM115 (closed by release())
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        if port_open(port):
            handle.close()
            return False
        self.held[port] = handle
        return True

    def any(self) -> int:
        """A free port, claimed."""
        while not self.claim(port := free_port()):
            pass
        return port

    def release(self) -> None:
        for handle in self.held.values():
            handle.close()
        self.held.clear()

    def __enter__(self) -> PortClaims:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def alive(pid: int | None) -> bool:
    """True when the process runs (a zombie counts as gone)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    if fields is None:  # no /proc here, or the process was reaped between the two looks: ask again
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return fields[0] != "Z"


def started_at(pid: int | None) -> float | None:
    """When a process started, in seconds since the epoch (to the clock tick; the same process always
    gives the same figure on one boot); None when it is gone or there is no /proc to ask. Tells a
    process from a later one that was given the same pid."""
    if not pid:
        return None
    fields = _stat(pid)
    if fields is None:
        return None
    try:
        ticks = int(fields[19])  # starttime
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """A process's /proc stat fields after its name (field 3 on: state, ppid, pgrp, …); None when it is
    gone or there is no /proc to ask."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _stats() -> dict[int, list[str]]:
    """Each live process's stat fields (`_stat`)."""
    try:
        pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    except OSError:
        return {}
    return {pid: fields for pid in pids if (fields := _stat(pid)) is not None}


def descendants(pid: int) -> list[int]:
    """The processes `pid` started, and theirs, from /proc (none where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for child, fields in _stats().items():
        children.setdefault(int(fields[1]), []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    """A process's command line, its arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _of_group(group: int | None) -> dict[int, list[str]]:
    """The stat fields of each process of a process group (zombies too)."""
    return {pid: fields for pid, fields in _stats().items() if group and int(fields[2]) == group}


def group_cpu_seconds(group: int) -> dict[tuple[int, int], float]:
    """The CPU seconds (user and system) each live process of a process group has used, by its pid and
    start (a later process given the same pid is another key)."""
    tick = os.sysconf("SC_CLK_TCK")
    return {(pid, int(fields[19])): (int(fields[11]) + int(fields[12])) / tick
            for pid, fields in _of_group(group).items()}


def wait_stopped(pids: list[int] | None = None, group: int | None = None, timeout_s: float = 5.0) -> bool:
    """Wait until the processes `pids` (else those of process group `group`) are stopped by a signal or
    gone: SIGSTOP takes effect when the kernel next schedules a process, not when it is sent. False when
    one still runs after `timeout_s` (one in uninterruptible sleep stops when it leaves it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if pids is None:
            states = [fields[0] for fields in _of_group(group).values()]
        else:
            states = [(_stat(pid) or ["X"])[0] for pid in pids]
        if all(state in "TtZX" for state in states):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def spawn(argv: list[str], *, pidfile: Path, logfile: Path, env: dict | None = None,
          cwd: Path | None = None, **options) -> int:
    """Start a detached process (own session, survives its parent) logging to logfile; options go to
    Popen (e.g. `user` and `group` for a server that will not run as root)."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            **options,
        )
    pidfile.write_text(f"{process.pid}\n")
    _children[process.pid] = process
    return process.pid


def reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        child.poll()


def terminate(pid: int | None, grace_s: float = 30.0, first: int = signal.SIGTERM) -> bool:
    """`first` (SIGTERM) to the process group, wait up to grace_s, then SIGKILL. True when it is gone,
    with every process of its group: a service is stopped only once nothing it started still works (a
    Dagster run forked under `dagster dev` outlives it by seconds, reading the broker stopped next)."""
    if pid:
        reap(pid)  # one killed from outside: its pid must not stay taken by a zombie
    if not alive(pid) and not _group_left(pid):
        return True
    assert pid is not None
    _signal_group(pid, first)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        reap(pid)
        if not alive(pid) and not _group_left(pid):
            return True
        time.sleep(0.1)
    _signal_group(pid, signal.SIGKILL)
    for _ in range(50):
        reap(pid)
        if not alive(pid) and not _group_left(pid):
            return True
        time.sleep(0.1)
    return not alive(pid)


def _group_left(group: int | None) -> list[int]:
    """The processes of a process group still running (zombies are gone)."""
    return [pid for pid, fields in _of_group(group).items() if fields[0] not in "ZX"]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
