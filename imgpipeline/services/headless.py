"""The daemon alone, as `dagster dev` runs it less its webserver (`python -m imgpipeline.services.headless`,
what services/dagster_dev.py starts for a host no one browses): the code location in one code server kept
for the daemon's life, and `dagster-daemon run` on a workspace that points at it.

`dagster-daemon run -m imgpipeline.definitions` starts a code server of its own and drops it for a new one
at each refresh of its workspace, every minute: the code location imported again each time (an idle
daemon with its broker and S3 endpoint kept 30 % of a core busy, 20 % this way). Here Dagster's own
manager of `dagster dev`'s code servers keeps one, started again if it exits; a code server it holds that
is gone (SIGKILLed, out of memory) is loaded again within CHECK_S × 2 (a daemon given the module did so
at its next refresh). The daemon is this process's child and dies with it (a SIGKILL of this process
alone takes it along); this process ends with the daemon's exit code.
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
CHECK_S = 5.0  # between looks at the daemon and the code server
PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent() -> None:
    """In the child, before it runs: SIGKILLed when its parent dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def code_servers() -> list[int]:
    """The code servers under this process (the managed server's own child, which loads the code)."""
    return [pid for pid in descendants(os.getpid()) if " api grpc " in cmdline(pid)]


def reload_code(spec: dict) -> None:
    """Ask the managed code server to load the code location again (it starts a new child for it)."""
    from imgpipeline.lib.dagster_door import DagsterGrpcClient

    server = spec["grpc_server"]
    try:
        DagsterGrpcClient(socket=server.get("socket"), host=server.get("host", "localhost"),
                          port=server.get("port")).reload_code(timeout=120)
    except Exception as error:  # noqa: BLE001 - tried again at the next look
        print(f"headless: the code server could not be loaded again ({error})", file=sys.stderr, flush=True)


def main() -> int:
    import yaml

    from imgpipeline.lib.dagster_door import DAEMON_MODULE, ModuleTarget, ProxyServerManager
    from imgpipeline.lib.instance import open_instance

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    target = ModuleTarget(module_name=CODE_LOCATION, attribute=None, working_directory=None,
                          location_name=None)
    with open_instance(Path(os.environ["DAGSTER_HOME"])) as instance, \
            ProxyServerManager(instance, target, "warning") as servers, \
            tempfile.TemporaryDirectory(prefix="imgpipeline-daemon-") as folder:
        specs = servers.get_code_server_specs()
        workspace = Path(folder) / "workspace.yaml"
        workspace.write_text(yaml.safe_dump({"load_from": list(specs)}))
        daemon = subprocess.Popen([sys.executable, "-m", DAEMON_MODULE, "run", "-w", str(workspace)],
                                  preexec_fn=die_with_parent)
        try:
            missing = 0
            while daemon.poll() is None:
                time.sleep(CHECK_S)
                missing = 0 if code_servers() else missing + 1
                if missing >= 2:  # gone at two looks: not one being replaced
                    for spec in specs:
                        reload_code(spec)
                    missing = 0
        finally:
            if daemon.poll() is None:
                daemon.terminate()
                daemon.wait(timeout=60)
        return daemon.returncode


if __name__ == "__main__":
    sys.exit(main())
