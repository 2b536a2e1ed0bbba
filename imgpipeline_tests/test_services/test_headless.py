"""How the daemon alone looks after its code server (services/headless.py), on processes standing in for
the code server (each binds the socket it is given, as `dagster api grpc` does once the code location
loaded), the clock given. The real code server killed under a real daemon: test_daemon.py."""

from __future__ import annotations

import sys
from pathlib import Path

from imgpipeline.services.headless import GIVE_UP_S, MAX_PAUSE_S, PAUSE_S, Keeper
from imgpipeline_tests.pipeline import wait_for


def stand_in(socket: Path) -> list[str]:
    """A code server that serves on `socket` until killed."""
    code = ("import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); "
            "time.sleep(300)")
    return [sys.executable, "-c", code, str(socket)]


def killed_once_serving(keeper: Keeper, now: float):
    """Wait until the keeper's code server serves, tell the keeper so at `now`, then SIGKILL it."""
    server = keeper.server
    wait_for(keeper.serving, 30, "the stand-in code server to serve")
    assert keeper.look(now) and keeper.server is server
    server.kill()
    server.wait()
    return server


def test_a_code_server_that_exits_is_started_again_at_once_then_less_often_while_it_keeps_exiting(tmp_path):
    socket = tmp_path / "code.sock"
    keeper, t, made = Keeper(socket, stand_in(socket)), 1000.0, []
    try:
        assert keeper.look(t)
        made.append(first := keeper.server)
        killed_once_serving(keeper, t + 1)
        # At once; and on the same socket, the killed one's file left behind.
        assert socket.exists() and keeper.look(t + 2) and keeper.server is not first
        made.append(second := keeper.server)
        killed_once_serving(keeper, t + 3)
        assert keeper.look(t + 3) and keeper.server is second  # exited soon again: held back PAUSE_S
        assert keeper.look(t + 2 + PAUSE_S) and keeper.server is not second
        made.append(third := keeper.server)
        killed_once_serving(keeper, t + 3 + PAUSE_S)
        start = t + 2 + PAUSE_S
        assert keeper.look(start + 2 * PAUSE_S - 1) and keeper.server is third  # the pause doubled
        assert keeper.look(start + 2 * PAUSE_S) and keeper.server is not third
        made.append(fourth := keeper.server)
        start += 2 * PAUSE_S
        # Served MAX_PAUSE_S since it started: a loss after that is made good at once again.
        killed_once_serving(keeper, start + MAX_PAUSE_S)
        assert keeper.look(start + MAX_PAUSE_S + 1) and keeper.server is not fourth
        made.append(fifth := keeper.server)
        # And one more loss soon after is held back PAUSE_S again, not twice the last pause.
        start += MAX_PAUSE_S + 1
        killed_once_serving(keeper, start + 1)
        assert keeper.look(start + PAUSE_S) and keeper.server is not fifth
        made.append(keeper.server)
        wait_for(keeper.serving, 30, "the sixth code server to serve")
    finally:
        keeper.stop()
        for process in made:
            process.kill()
            process.wait()


def test_the_daemon_alone_gives_up_on_a_code_server_that_never_serves(tmp_path):
    """One that cannot load the code location exits before it binds its socket, every time."""
    keeper, t = Keeper(tmp_path / "code.sock", [sys.executable, "-c", "raise SystemExit(3)"]), 1000.0
    try:
        assert keeper.look(t)
        for step in range(1, int(GIVE_UP_S)):
            wait_for(lambda: keeper.server.poll() is not None, 30, "the stand-in to exit")
            assert keeper.look(t + step) and not keeper.serving()
        assert not keeper.look(t + GIVE_UP_S)
    finally:
        keeper.stop()
