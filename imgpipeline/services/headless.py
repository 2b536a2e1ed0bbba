"""The daemon alone, as `dagster dev` runs it less its webserver (`python -m imgpipeline.services.headless`,
what services/dagster_dev.py starts for a host no one browses): the code location in one code server
(`dagster api grpc` on a socket) kept for the daemon's life, and `dagster-daemon run` on a workspace that
points at that socket.

`dagster-daemon run -m imgpipeline.definitions` starts a code server of its own and drops it for a new one
at each refresh of its workspace, every minute: the code location imported again each time (an idle
daemon with its broker and S3 endpoint kept 30 % of a core busy). Here the code server is started once,
and the daemon only once it serves (its socket is bound after the code location loaded). A code server
that exits (SIGKILLed, out of memory) is started again on the same socket at once, and again later the
more often it exits: after PAUSE_S, then twice that each time, up to MAX_PAUSE_S, back to at once after
it served MAX_PAUSE_S. With no code server serving for GIVE_UP_S (one that cannot load the code location,
say) this process stops the daemon and ends, so the service shows stopped instead of a daemon that cannot
reach its code; the code server's own log says why. The code location is loaded once: a setting or code
changed takes effect when the daemon is started again.

This process imports no Dagster (the daemon and the code server do). Both are its children and die with
it (a SIGKILL of this process alone takes them along); SIGTERM stops the code server first, then the
daemon. It ends with the daemon's exit code (128 + the signal that ended it), 1 when it gave up on the
code server.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgpipeline.lib.dagster_door import DAEMON_MODULE

CODE_LOCATION = "imgpipeline.definitions"
CHECK_S = 1.0  # between looks at the code server
PAUSE_S = 5.0  # before a code server that exited again soon is started again, doubled each time
MAX_PAUSE_S = 300.0  # at most between starts of a code server that keeps exiting
GIVE_UP_S = 90.0  # without a code server serving this long, the daemon is stopped
PR_SET_PDEATHSIG = 1  # prctl(2)
try:  # resolved here, before any thread: the child only calls it
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def die_with(parent: int):
    """For the child, before it runs: SIGKILLed when `parent` dies (Linux), and gone at once if it
    already has."""

    def prepare() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(1)

    return prepare


def server_argv(path: Path) -> list[str]:
    """The code server of the code location on the socket at `path`, with this interpreter."""
    return [sys.executable, "-m", "dagster", "api", "grpc", "-m", CODE_LOCATION, "--location-name",
            CODE_LOCATION, "--socket", str(path), "--log-level", "warning"]


class Keeper:
    """The code server: started (`start`), looked at (`look`), started again when it exited, at most
    every `pause`; False from `look` once none served for GIVE_UP_S."""

    def __init__(self, path: Path, argv: list[str] | None = None):
        self.socket, self.argv = path, argv or server_argv(path)
        self.server: subprocess.Popen | None = None
        self.started_at, self.pause = float("-inf"), 0.0
        self.served_at: float | None = None  # when it was last seen serving

    def start(self, now: float) -> None:
        self.socket.unlink(missing_ok=True)  # a killed server's: the new one binds the same path
        self.server = subprocess.Popen(self.argv, preexec_fn=die_with(os.getpid()))
        self.started_at = now
        self.served_at = self.served_at if self.served_at is not None else now

    def serving(self) -> bool:
        """Its process running and its socket taking connections."""
        if self.server is None or self.server.poll() is not None:
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def look(self, now: float) -> bool:
        if self.serving():
            if now - self.started_at >= MAX_PAUSE_S:
                self.pause = 0.0  # up for long: a later loss is not held back
            self.served_at = now
            return True
        if now - (self.served_at if self.served_at is not None else now) >= GIVE_UP_S:
            return False
        if (self.server is None or self.server.poll() is not None) and now - self.started_at >= self.pause:
            if self.server is not None:
                say(f"the code server exited ({self.server.returncode}): starting it again")
                self.pause = min(MAX_PAUSE_S, max(PAUSE_S, 2 * self.pause))
            self.start(now)
        return True

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()


def say(line: str) -> None:
    print(f"headless: {line}", file=sys.stderr, flush=True)


class Stopping(Exception):
    """SIGTERM: the code server, then the daemon, stopped."""


def stop(_signum, _frame):
    raise Stopping


def main() -> int:
    signal.signal(signal.SIGTERM, stop)
    with tempfile.TemporaryDirectory(prefix="imgpipeline-daemon-") as folder:
        keeper = Keeper(Path(folder) / "code.sock")
        try:
            return run(keeper, Path(folder))
        except Stopping:  # before the daemon started
            return 0
        finally:
            keeper.stop()


def run(keeper: Keeper, folder: Path) -> int:
    """The code server until it serves, then the daemon on it until it ends."""
    while not keeper.serving():
        if not keeper.look(time.monotonic()):
            say(f"no code server served within {GIVE_UP_S:.0f} s: not starting the daemon")
            return 1
        time.sleep(0.2)
    workspace = folder / "workspace.yaml"
    workspace.write_text("load_from:\n  - grpc_server:\n"
                         f"      socket: {keeper.socket}\n      location_name: {CODE_LOCATION}\n")
    daemon = subprocess.Popen([sys.executable, "-m", DAEMON_MODULE, "run", "-w", str(workspace)],
                              preexec_fn=die_with(os.getpid()))
    gave_up = not keep(keeper, daemon)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already
    # The code server is stopped before the daemon is waited for: one that the group's SIGTERM ended is
    # not started again meanwhile.
    keeper.stop()
    if daemon.poll() is None:
        daemon.terminate()
    code = daemon.wait(timeout=60)
    return 1 if gave_up else (code if code >= 0 else 128 - code)


def keep(keeper: Keeper, daemon: subprocess.Popen) -> bool:
    """Look after the code server while the daemon runs; False when it gave up on the code server."""
    try:
        while daemon.poll() is None:
            time.sleep(CHECK_S)
            if not keeper.look(time.monotonic()):
                say(f"no code server for {GIVE_UP_S:.0f} s: stopping the daemon")
                return False
    except Stopping:
        pass
    return True


if __name__ == "__main__":
    sys.exit(main())
