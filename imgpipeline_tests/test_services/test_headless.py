"""How the daemon alone looks after its code server (services/headless.py), on processes standing in for
the code server: their command lines are what the keeper looks for, the clock is given. The real code
server killed under a real daemon: test_daemon.py."""

from __future__ import annotations

import subprocess
import sys

from imgpipeline.services.headless import GIVE_UP_S, MISSING_S, Keeper, under
from imgpipeline_tests.pipeline import wait_for


def server_without_child(made: list[subprocess.Popen]) -> subprocess.Popen:
    """A process named like a `code-server start` whose `api grpc` child is gone."""
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "code-server", "start"])
    made.append(server)
    wait_for(lambda: server.pid in under(" code-server start ")[0], 30, "the stand-in code server")
    return server


def test_a_code_server_without_its_child_is_started_again_less_often_while_it_keeps_going():
    keeper, t, made = Keeper(), 1000.0, []
    try:
        first = server_without_child(made)
        assert keeper.look(t) and keeper.look(t + MISSING_S - 1)
        assert first.poll() is None  # its child may be starting still
        assert keeper.look(t + MISSING_S)
        assert first.wait(timeout=30) < 0  # ended, for the manager to start it again
        second = server_without_child(made)  # started again, and its child gone again
        assert keeper.look(t + MISSING_S + 5) and keeper.look(t + 2 * MISSING_S + 5)
        assert second.wait(timeout=30) < 0  # ended after MISSING_S again (the pause was MISSING_S)
        third = server_without_child(made)
        assert keeper.look(t + 2 * MISSING_S + 10) and keeper.look(t + 3 * MISSING_S + 10)
        assert third.poll() is None  # held back: the pause doubled
        assert keeper.look(t + 4 * MISSING_S + 5)
        assert third.wait(timeout=30) < 0
    finally:
        for process in made:
            process.kill()
            process.wait()


def test_the_daemon_alone_gives_up_on_a_code_server_that_does_not_come_back():
    keeper, t = Keeper(), 1000.0
    assert not under(" code-server start ")[0]
    assert keeper.look(t) and keeper.look(t + GIVE_UP_S - 1)  # the manager may be starting it again
    assert not keeper.look(t + GIVE_UP_S)
