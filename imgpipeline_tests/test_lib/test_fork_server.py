"""The fork server the run launcher forks runs from: started as a module by the argv the launcher uses.
Its runs are launched, niced, terminated and restarted on changed code in test_launcher.py."""

from __future__ import annotations

import os
import subprocess

from imgpipeline.lib.fork_server import INSTANCE_REF_ENV, server_argv


def test_the_server_started_without_an_instance_says_how_to_start_it():
    """The argv the launcher starts the server with runs this module's server, which refuses to start
    without the instance ref it is given by environment and names itself in the usage."""
    argv = server_argv(["imgpipeline.definitions"])
    environment = {name: value for name, value in os.environ.items() if name != INSTANCE_REF_ENV}
    result = subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=120)
    assert argv[1:3] == ["-m", "imgpipeline.lib.fork_server"]
    assert result.returncode == 1
    assert f"{INSTANCE_REF_ENV}=<instance ref> python -m imgpipeline.lib.fork_server MODULE" in result.stderr
