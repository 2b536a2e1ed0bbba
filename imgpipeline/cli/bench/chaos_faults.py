"""The faults `imgpipeline bench chaos` deals, each on the real process or disk it names.

Each fault is a function of the chaos (`chaos.py`'s `Chaos`: the local services, the viewer, the tmpfs)
and a seeded random generator; it does its harm, waits out its length, undoes what a person would undo
(a stopped process continued, a filled disk emptied, a killed `dagster dev` started again) and returns
what it did, in a few words.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import signal
import time
from urllib.parse import urlsplit

from imgpipeline.services.process import alive, cmdline, descendants, terminate, wait_stopped

# What a kill of a run worker takes: the fast lane's follow run has a fault of its own.
FOLLOW_JOB = "follow_frames"


def dagster_children(chaos, marker: str) -> list[int]:
    """The processes under `dagster dev` whose command line holds `marker`."""
    pid = chaos.local.dagster.pid
    return [child for child in (descendants(pid) if pid else []) if marker in cmdline(child)]


def started_workers(chaos, follow: bool) -> list[int]:
    """The worker pids of the runs in flight: the follow run's (`follow`), else every other job's."""
    import dagster as dg

    from imgpipeline.lib.instance import open_instance
    from imgpipeline.lib.launcher import PID_TAG

    with open_instance(chaos.local.dagster.dagster_home) as instance:
        runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    pids = [int(run.tags[PID_TAG]) for run in runs
            if PID_TAG in run.tags and (run.job_name == FOLLOW_JOB) == follow]
    return [pid for pid in pids if alive(pid)]


def kill_worker(chaos, rng, follow: bool) -> str:
    """SIGKILL a run's worker, waiting up to two minutes for one to be in flight."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if pids := started_workers(chaos, follow):
            pid = rng.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            return f"SIGKILL worker {pid}"
        time.sleep(0.2)
    return "not dealt: no run in flight within 120 s"


def kill_run_worker(chaos, rng) -> str:
    return kill_worker(chaos, rng, follow=False)


def kill_follow_run(chaos, rng) -> str:
    return kill_worker(chaos, rng, follow=True)


def kill_under_dagster(chaos, marker: str, what: str) -> str:
    """SIGKILL the processes under `dagster dev` whose command line holds `marker`; then `dagster dev`
    whole again (chaos.dagster_back)."""
    killed = []
    for pid in dagster_children(chaos, marker):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            continue
    if not killed:
        return f"not dealt: no {what} running under dagster dev"
    return f"SIGKILL {what} {killed}; " + chaos.dagster_back(killed)


def kill_daemon(chaos, rng) -> str:
    return kill_under_dagster(chaos, "dagster._daemon", "daemon")


def kill_code_server(chaos, rng) -> str:
    """The code server: the gRPC server of the code location under `dagster dev`'s code-server proxy."""
    return kill_under_dagster(chaos, "api grpc", "code server")


def stop_for(chaos, rng, service) -> str:
    """SIGSTOP a service's process group (PostgreSQL's postmaster and its backends alike) for 20–60 s
    (scaled, at least 8 s), then SIGCONT."""
    group, length = service.pid, chaos.scaled(rng.uniform(20, 60), at_least=8)
    os.killpg(group, signal.SIGSTOP)
    try:
        wait_stopped(group=group)
        time.sleep(length)
    finally:
        os.killpg(group, signal.SIGCONT)
    return f"SIGSTOP {service.name} (process group {group}) for {length:.1f} s"


def stop_broker(chaos, rng) -> str:
    return stop_for(chaos, rng, chaos.local.kafka)


def stop_s3(chaos, rng) -> str:
    return stop_for(chaos, rng, chaos.local.s3)


def stop_postgres(chaos, rng) -> str:
    return stop_for(chaos, rng, chaos.local.postgres)


def restart(service) -> None:
    """The service stopped as its operator would stop it and started again on the same ports."""
    ports = service.ports
    service.stop()
    service._start_on(ports)


def restart_mosquitto(chaos, rng) -> str:
    restart(chaos.local.mqtt)
    return "Mosquitto restarted under the bridge"


def restart_viewer(chaos, rng) -> str:
    """The viewer restarted while a request of its day page is on the wire (sent, not yet answered)."""
    url = urlsplit(chaos.viewer_url())
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        connection.request("GET", "/")
        restart(chaos.local.viewer)
        try:
            answer = str(connection.getresponse().status)
        except OSError as exc:  # the viewer went before it answered
            answer = type(exc).__name__
    finally:
        connection.close()
    chaos.viewer_restarted = time.monotonic()
    return f"viewer restarted mid-request (the request: {answer})"


def fill_disk(chaos, rng) -> str:
    """The tmpfs of the pipeline's local state filled for 30 s (scaled), then emptied."""
    ballast = chaos.tmpfs / "ballast"
    length, written = chaos.scaled(30, at_least=8), 0
    chunk = b"\0" * (1 << 20)
    try:
        try:
            with ballast.open("wb") as out:
                while True:
                    out.write(chunk)
                    out.flush()
                    written += len(chunk)
        except OSError as exc:  # full (the close's flush may find it so too)
            if exc.errno != errno.ENOSPC:
                raise
        time.sleep(length)
    finally:
        ballast.unlink(missing_ok=True)
    return f"{chaos.tmpfs} full ({written >> 20} MiB of ballast) for {length:.1f} s"


FAULTS = {
    "kill run worker": kill_run_worker,
    "kill follow run": kill_follow_run,
    "kill daemon": kill_daemon,
    "kill code server": kill_code_server,
    "stop broker": stop_broker,
    "stop S3 endpoint": stop_s3,
    "stop PostgreSQL": stop_postgres,
    "restart Mosquitto": restart_mosquitto,
    "restart viewer": restart_viewer,
    "fill disk": fill_disk,
}


def dagster_gone(chaos, every: bool = False) -> None:
    """`dagster dev` and its process group SIGKILLed (its daemon, code server and runs), as a machine that
    lost it would; with `every`, what is left of the groups of every `dagster dev` of the chaos too (the
    runs a `dagster dev` that ended by itself left running on)."""
    for group in chaos.dagster_groups if every else ():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    terminate(chaos.local.dagster.pid, 0, signal.SIGKILL)
    chaos.local.dagster.pidfile.unlink(missing_ok=True)
