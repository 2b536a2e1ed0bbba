"""The faults `imgpipeline bench chaos` deals, each on the real process or disk it names.

Each fault is a function of the chaos (`chaos.py`'s `Chaos`: the local services, the viewer, the tmpfs)
and a seeded random generator; it does its harm, waits out its length, undoes what a person would undo
(a stopped process continued, a filled disk emptied, a killed `dagster dev` started again) and returns
what it did, in a few words.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

from imgpipeline.services.process import alive, descendants, terminate

# What a kill of a run worker takes: the fast lane's follow run has a fault of its own.
FOLLOW_JOB = "follow_frames"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


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
    """SIGKILL a run's worker, waiting up to a minute for one to be in flight."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if pids := started_workers(chaos, follow):
            pid = rng.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            return f"SIGKILL worker {pid}"
        time.sleep(0.2)
    return "no run in flight within 60 s: nothing killed"


def kill_run_worker(chaos, rng) -> str:
    return kill_worker(chaos, rng, follow=False)


def kill_follow_run(chaos, rng) -> str:
    return kill_worker(chaos, rng, follow=True)


def kill_daemon(chaos, rng) -> str:
    """SIGKILL the daemon process of `dagster dev`; whatever `dagster dev` makes of that, it runs again."""
    pids = dagster_children(chaos, "dagster._daemon")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return f"SIGKILL daemon {pids}; " + chaos.dagster_back(pids)


def kill_code_server(chaos, rng) -> str:
    """SIGKILL the code server (the gRPC server of the code location) under `dagster dev`."""
    pids = dagster_children(chaos, "api grpc") or dagster_children(chaos, "code-server")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return f"SIGKILL code server {pids}; " + chaos.dagster_back(pids)


def stop_for(chaos, rng, service) -> str:
    """SIGSTOP a service's process for 20–60 s (scaled), then SIGCONT."""
    pid, length = service.pid, chaos.scaled(rng.uniform(20, 60))
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(length)
    finally:
        os.kill(pid, signal.SIGCONT)
    return f"SIGSTOP {service.name} ({pid}) for {length:.1f} s"


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
    """The viewer restarted while a request of a day page is in flight."""
    asked: dict = {}

    def request() -> None:
        try:
            with urllib.request.urlopen(f"{chaos.viewer_url()}/", timeout=60) as response:
                asked["status"] = response.status
        except OSError as exc:
            asked["status"] = type(exc).__name__

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    time.sleep(0.05)
    restart(chaos.local.viewer)
    thread.join(timeout=60)
    return f"viewer restarted mid-request (the request: {asked.get('status', 'unanswered')})"


def fill_disk(chaos, rng) -> str:
    """The tmpfs of the pipeline's local state filled for 30 s (scaled), then emptied."""
    ballast = chaos.tmpfs / "ballast"
    length, written = chaos.scaled(30), 0
    chunk = b"\0" * (1 << 20)
    try:
        with ballast.open("wb") as out:
            while True:
                try:
                    out.write(chunk)
                    out.flush()
                    written += len(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    except OSError as exc:  # the close's flush finds the disk full too
        if exc.errno != errno.ENOSPC:
            raise
    try:
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


def dagster_gone(local) -> None:
    """`dagster dev` and its group SIGKILLed, as a machine that lost it would."""
    terminate(local.dagster.pid, 0, signal.SIGKILL)
    local.dagster.pidfile.unlink(missing_ok=True)
