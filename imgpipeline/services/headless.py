"""The daemon alone, as `dagster dev` runs it less its webserver (`python -m imgpipeline.services.headless`,
what services/dagster_dev.py starts for a host no one browses): the code location in one code server kept
for the daemon's life, and `dagster-daemon run` on a workspace that points at it.

`dagster-daemon run -m imgpipeline.definitions` starts a code server of its own and drops it for a new one
at each refresh of its workspace, every minute: the code location imported again each time (an idle
daemon with its broker and S3 endpoint kept 30 % of a core busy, 20 % this way). Here Dagster's own
manager of `dagster dev`'s code servers keeps one: a `code-server start` process on a socket, started
again on the same socket when it exits, which loads the code location in an `api grpc` child. A child
gone for MISSING_S (SIGKILLed, out of memory) has its server ended, so that the manager starts both
again; one that keeps going is started again less often (twice the wait each time, up to MAX_PAUSE_S).
A server the manager could not start again for GIVE_UP_S ends this process with its daemon, so the
service shows stopped instead of a daemon that cannot reach its code. The code location is loaded once:
a setting or code changed takes effect when the daemon is started again.

The daemon is this process's child and dies with it (a SIGKILL of this process alone takes it along);
SIGTERM stops the code server first, then the daemon. This process ends with the daemon's exit code
(128 + the signal that ended it), 1 when it gave up on the code server.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgpipeline.services.process import cmdline, descendants

CODE_LOCATION = "imgpipeline.definitions"
CHECK_S = 5.0  # between looks at the code server
MISSING_S = 20.0  # its child missing this long (not one starting on a busy machine): it is started again
MAX_PAUSE_S = 300.0  # at most between starts of a code server whose child keeps going
GIVE_UP_S = 60.0  # without a code server this long, the daemon is stopped
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


def under(*markers: str) -> list[list[int]]:
    """Per marker, the processes under this one whose command line holds it (one look at them all)."""
    lines = {pid: cmdline(pid) for pid in descendants(os.getpid())}
    return [[pid for pid, line in lines.items() if marker in line] for marker in markers]


class Keeper:
    """The looks at the code server. Its child missing for MISSING_S: the server is ended, for the manager
    to start both again (at most every `pause`, which doubles while they keep going, up to MAX_PAUSE_S).
    No server for GIVE_UP_S (the manager could not start it again): False."""

    def __init__(self):
        self.childless_since: float | None = None
        self.serverless_since: float | None = None
        self.ended_at, self.pause = float("-inf"), 0.0

    def look(self, now: float) -> bool:
        servers, children = under(" code-server start ", " api grpc ")
        self.serverless_since = None if servers else (self.serverless_since or now)
        if self.serverless_since is not None and now - self.serverless_since >= GIVE_UP_S:
            return False
        self.childless_since = (self.childless_since or now) if servers and not children else None
        if children and now - self.ended_at >= MAX_PAUSE_S:
            self.pause = 0.0  # up again for long: a later loss is not held back
        if self.childless_since is not None and now - self.childless_since >= MISSING_S \
                and now - self.ended_at >= self.pause:
            say("the code server's child is gone: starting the code server again")
            for pid in servers:
                end(pid)
            self.ended_at, self.childless_since = now, None
            self.pause = min(MAX_PAUSE_S, max(MISSING_S, 2 * self.pause))
        return True


def end(pid: int) -> None:
    """SIGKILL `pid` if it is still there."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def say(line: str) -> None:
    print(f"headless: {line}", file=sys.stderr, flush=True)


class Stopping(Exception):
    """SIGTERM: the code server, then the daemon, stopped."""


def stop(_signum, _frame):
    raise Stopping


def main() -> int:
    signal.signal(signal.SIGTERM, stop)
    try:
        return run()
    except Stopping:  # before the daemon started
        return 0


def run() -> int:
    import yaml

    from imgpipeline.lib.dagster_door import DAEMON_MODULE, ModuleTarget, ProxyServerManager
    from imgpipeline.lib.instance import open_instance

    target = ModuleTarget(module_name=CODE_LOCATION, attribute=None, working_directory=None,
                          location_name=None)
    with open_instance(Path(os.environ["DAGSTER_HOME"])) as instance, \
            tempfile.TemporaryDirectory(prefix="imgpipeline-daemon-") as folder:
        with ProxyServerManager(instance, target, "warning") as servers:
            workspace = Path(folder) / "workspace.yaml"
            workspace.write_text(yaml.safe_dump({"load_from": list(servers.get_code_server_specs())}))
            daemon = subprocess.Popen([sys.executable, "-m", DAEMON_MODULE, "run", "-w", str(workspace)],
                                      preexec_fn=die_with(os.getpid()))
            gave_up = not keep(daemon)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already
            if daemon.poll() is None:
                daemon.terminate()
        # The code server is stopped (leaving the block) before the daemon is waited for: a server that
        # the group's SIGTERM ended is not started again meanwhile.
        code = daemon.wait(timeout=60)
    return 1 if gave_up else (code if code >= 0 else 128 - code)


def keep(daemon: subprocess.Popen) -> bool:
    """Look after the code server while the daemon runs; False when it gave up on the code server."""
    keeper = Keeper()
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
