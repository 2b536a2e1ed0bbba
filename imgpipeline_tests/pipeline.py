"""Drive the real sensor and real detect_frames runs in this process, as the daemon would."""

from __future__ import annotations

import json
import time

import dagster as dg

from imgpipeline.defs.records.reader import all_records, landing_keys
from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.claims import CLAIMS
from imgpipeline.defs.streaming.detect_frames import detect_frames
from imgpipeline.defs.streaming.frames_sensor import build_frames_sensor
from imgpipeline.resources import DetectorResource

IMMEDIATE = BatchPolicy(fast_lane=False, max_batch=100, max_wait_s=0, watch_s=0)


def wait_for(condition, timeout_s: float, what: str, explain=None, every_s: float = 0.2):
    """condition()'s first true value, asked every `every_s` for up to `timeout_s`; else fails naming what
    it waited for, and what explain() says it saw."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            seen = f"; {explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{seen}")
        time.sleep(every_s)
    return value


def run_resources(**given) -> dict:
    """The resources a run of the code location gets, from the settings as the environment says now (what
    a test set in it included), the `given` ones instead of theirs."""
    from imgpipeline.configuration import Settings

    return {**Settings.from_env().resources(), **given}


def code_location_rules():
    """The alert rules the code location loads with, once checked against its zones and model."""
    from imgpipeline.configuration import Settings

    return Settings.from_env().checked().alert_rules


def drain(kafka, storage, instance, policy=IMMEDIATE, cursor=None,
          max_ticks: int = 50, detector=None) -> tuple[list, str | None]:
    """Tick the sensor and execute every run it requests until nothing is pending.

    Returns the executed (run request, result) pairs and the final cursor.
    """
    sensor = build_frames_sensor(policy)
    resources = run_resources(kafka=kafka, storage=storage, detector=detector or DetectorResource.from_env())
    runs = []
    for _ in range(max_ticks):
        with dg.build_sensor_context(instance=instance, cursor=cursor,
                                     resources={"kafka": kafka, "storage": storage}) as context:
            result = sensor.evaluate_tick(context)  # as the daemon evaluates it, its run requests checked
        requests = result.run_requests or []
        cursor = result.cursor or cursor
        for request in requests:
            outcome = detect_frames.execute_in_process(
                run_config=request.run_config, instance=instance, resources=resources,
                tags=request.tags,
            )
            assert outcome.success
            runs.append((request, outcome))
        lag = json.loads(cursor)["lag"] if cursor else None
        if not requests and lag is not None and not any(lag.values()):
            return runs, cursor
        if not requests:
            time.sleep(0.2)
    raise AssertionError(f"still pending after {max_ticks} ticks: {cursor}")


def storage_env(storage) -> dict:
    """The environment that gives a process this storage resource (a store killed mid-work is one)."""
    import os

    s3 = storage.s3
    given = {"IMGPIPELINE_STORAGE_URI": storage.uri, "AWS_ENDPOINT_URL": s3.endpoint_url,
             "AWS_ACCESS_KEY_ID": s3.aws_access_key_id, "AWS_SECRET_ACCESS_KEY": s3.aws_secret_access_key}
    return {**os.environ, **{name: str(value) for name, value in given.items() if value}}


# Prepended to a script run in a process of its own: `stop_after(owner, "method", when)` makes the process
# stop itself (SIGSTOP) once `owner.method` returned for a call `when` picks, for `kill_once_stopped` to
# SIGKILL it exactly there; killed by a poll from outside, a fast process raced past the point on a
# loaded machine.
STOP_AFTER = """
import os, signal
def stop_after(owner, name, when=lambda *args, **kwargs: True):
    call = getattr(owner, name)
    def stopping(*args, **kwargs):
        result = call(*args, **kwargs)
        if when(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGSTOP)
        return result
    setattr(owner, name, stopping)
"""


def wait_stopped(process) -> None:
    """Until a process started with a `stop_after` script stopped there; fails if it ended first."""
    import os

    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the process ended before the point it stops at (wait status {status})"


def kill_once_stopped(process) -> None:
    """SIGKILL a process started with a `stop_after` script once it stopped there; fails if it ended first."""
    wait_stopped(process)
    process.kill()
    process.wait()


def claims_of(store, run_id: str) -> list[str]:
    """The keys of the claims `run_id` holds now. A claim listed can be deleted before it is read (its
    range was accounted for meanwhile): it is then not held."""
    from imgpipeline.resources.storage import BadObject

    found = []
    for key in store.list(CLAIMS):
        try:
            if json.loads(store.get(key))["run_id"] == run_id:
                found.append(key)
        except (BadObject, ValueError, KeyError):
            continue
    return found


def landing_records(storage) -> list[dict]:
    return all_records(storage.open())


def landing_files(storage) -> dict[str, bytes]:
    store = storage.open()
    return {key: store.get(key) for key in landing_keys(store)}


def video_backlog(count: int, source: str = "test"):
    """`count` frames of bikes.mp4 (repeated as needed), ids unique to this call."""
    import uuid
    from datetime import UTC, datetime

    from imgpipeline.cli.samples import sample
    from imgpipeline.ingest.producer import Frame
    from imgpipeline.ingest.sources import video_frames

    video = list(video_frames(str(sample("bikes.mp4")), source, start=datetime.now(UTC)))
    tag = uuid.uuid4().hex[:6]
    return [Frame(f"{source}-{tag}-{i:06d}", f.data, f.captured, f.width, f.height)
            for i, f in ((i, video[i % len(video)]) for i in range(count))]


def produce(kafka, storage, folder, frames) -> None:
    """Send frames to the topic with a ledger of their own (nothing is skipped as sent before)."""
    from imgpipeline.ingest.producer import FrameProducer, Ledger

    FrameProducer(kafka, storage, "test", ledger=Ledger(folder / "ledger")).send_all(frames, progress=False)


def stream_cameras(kafka, storage, folder, sources, rounds: int, count: int, sent: list[str]) -> None:
    """`count` frames of each camera per round, as cameras send them a few at a time; their ids added to
    `sent` as they go."""
    from imgpipeline.ingest.producer import FrameProducer, Ledger

    for round_ in range(rounds):
        for source in sources:
            frames = video_backlog(count, source)
            FrameProducer(kafka, storage, source, ledger=Ledger(folder / f"ledger-{source}-{round_}")
                          ).send_all(frames, progress=False)
            sent.extend(f.frame_id for f in frames)
        time.sleep(0.3)  # scenario: cameras that send a few frames a second


def kill_when(command: list[str], env: dict, made, not_made, timeout_s: float = 180) -> None:
    """Run a command in its own process group and SIGKILL the group once `made` exists; the kill must
    land mid-work: `made` there, `not_made` not yet."""
    import os
    import signal
    import subprocess

    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not made.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert made.exists(), "the run ended before it was half done"
    assert not not_made.exists(), "the run finished before it was killed"


def stop_at_once(service) -> None:
    """A background service a test is done with, SIGKILLed with its process group: what it would still do
    on a graceful stop (`dagster dev` takes seconds to wind down its daemon and code servers) matters to no
    test."""
    import signal

    from imgpipeline.services.process import terminate

    terminate(service.pid, 0, signal.SIGKILL)
    service.pidfile.unlink(missing_ok=True)
