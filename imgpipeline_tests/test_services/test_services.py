import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgpipeline.services.process import alive
from imgpipeline_tests.pipeline import wait_for

pytestmark = pytest.mark.integration


def imgpipeline(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMGPIPELINE_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "imgpipeline.cli", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )


def processes_of(home: Path) -> list[int]:
    """Live processes whose command line or working directory lies under home."""
    text = str(home)
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            try:
                cwd = os.readlink(proc / "cwd")
            except OSError:
                cwd = ""
            if (text in cmdline or cwd.startswith(text)) and alive(int(proc.name)):
                pids.append(int(proc.name))
    return pids


def test_services_up_status_down_leaves_nothing_running(tmp_path):
    up = imgpipeline(tmp_path, "services", "up")
    assert up.returncode == 0, up.stderr
    assert re.search(r"kafka\s+ready at 127\.0\.0\.1:\d+", up.stdout)
    assert re.search(r"s3\s+ready at http://127\.0\.0\.1:\d+", up.stdout)
    env_file = (tmp_path / ".imgpipeline" / "services.env").read_text()
    assert re.search(r"^KAFKA_BOOTSTRAP_SERVERS=127\.0\.0\.1:\d+$", env_file, re.M)

    status = imgpipeline(tmp_path, "services", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"kafka\s+healthy at 127\.0\.0\.1:\d+ \(pid \d+\)", status.stdout)
    assert re.search(r"s3\s+healthy at http://127\.0\.0\.1:\d+ \(pid \d+\)", status.stdout)
    # The broker and the endpoint run in folders of this home.
    assert len(processes_of(tmp_path)) >= 2

    down = imgpipeline(tmp_path, "services", "down")
    assert down.returncode == 0, down.stderr
    assert "STILL RUNNING" not in down.stdout
    assert processes_of(tmp_path) == []
    after = imgpipeline(tmp_path, "services", "status")
    assert after.returncode == 1
    assert re.search(r"kafka\s+stopped", after.stdout) and re.search(r"s3\s+stopped", after.stdout)


def test_services_up_on_a_wildcard_address_is_refused(tmp_path):
    done = imgpipeline(tmp_path, "services", "up", "--host", "0.0.0.0")
    assert done.returncode == 2 and "give the address the other hosts reach" in done.stdout
    assert not (tmp_path / ".imgpipeline" / "services").exists()


def test_cluster_ids_never_look_like_an_option():
    import base64

    from imgpipeline.services.kafka_broker import new_cluster_id

    # One random UUID in 64 encodes with a leading '-': 2,000 ids would hold ~31 of them.
    ids = [new_cluster_id() for _ in range(2000)]
    assert not any(i.startswith("-") for i in ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)


def test_services_starting_at_once_never_claim_the_same_port():
    """Two starts at the same moment (two checkouts, two test workers) pass over each other's ports,
    preferred ones included, and over ports something listens on."""
    import socket

    from imgpipeline.services.process import PortClaims

    with PortClaims() as first, PortClaims() as second:
        port = first.any()
        assert not second.claim(port)  # claimed by the first start, though nothing listens yet
        other = second.any()
        assert other != port
    with PortClaims() as third:
        assert third.claim(port)  # released once the first start was done
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            assert not third.claim(listener.getsockname()[1])


def test_a_process_tree_and_a_groups_cpu_are_read_from_proc():
    """What bench latency stops (a run's worker and what it started) and how busy a group is."""
    from imgpipeline.cli.bench.latency import paused
    from imgpipeline.services.process import descendants, group_cpu_seconds, wait_stopped

    # A group of its own: a shell, a busy child, and a sleeping grandchild under a second shell.
    tree = subprocess.Popen(["bash", "-c", "(sleep 30 & wait) & while :; do :; done & wait"],
                            start_new_session=True)
    try:
        below = wait_for(lambda: len(found := descendants(tree.pid)) == 3 and found, 30, "the tree's three")
        assert len(below) == 3 and tree.pid not in below  # two subshells, and the sleep under one
        assert all(alive(pid) for pid in below)
        assert sorted(len(descendants(pid)) for pid in below) == [0, 0, 1]
        before = group_cpu_seconds(tree.pid)
        assert {pid for pid, _ in before} == {tree.pid, *below}

        def children() -> float:
            return sum(s for (pid, _), s in group_cpu_seconds(tree.pid).items() if pid in below)

        running = children()
        wait_for(lambda: children() > running, 30, "the busy loop's CPU seconds to grow")
        with paused(tree.pid, below):  # the children stopped, the shell not
            states = {pid: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                      for pid in [tree.pid, *below]}
            assert {states[pid] for pid in below} == {"T"} and states[tree.pid] != "T"
            assert wait_stopped(below, timeout_s=0) and not wait_stopped([tree.pid], timeout_s=0.05)
            stopped = children()
            spent = time.process_time() + 0.3
            while time.process_time() < spent:  # CPU given to this process: a running busy loop gets some too
                pass
            assert children() == stopped  # not a tick more while stopped
        wait_for(lambda: children() > stopped, 30, "the busy loop's CPU seconds to grow again once resumed")
        assert {Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] for pid in below} != {"T"}
    finally:
        os.killpg(tree.pid, signal.SIGKILL)
        tree.wait()
