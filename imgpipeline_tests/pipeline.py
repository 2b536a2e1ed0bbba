"""Drive the real sensor and real detect_frames runs in this process, as the daemon would."""

from __future__ import annotations

import json
import time

import dagster as dg

from imgpipeline.jobs.detect_frames import LANDING, detect_frames
from imgpipeline.resources import DetectorResource
from imgpipeline.sensors.frames_sensor import BatchPolicy, build_frames_sensor

IMMEDIATE = BatchPolicy(max_batch=100, max_wait_s=0)


def drain(kafka, storage, instance, policy=IMMEDIATE, cursor=None,
          max_ticks: int = 50, detector=None) -> tuple[list, str | None]:
    """Tick the sensor and execute every run it requests until nothing is pending.

    Returns the executed (run request, result) pairs and the final cursor.
    """
    sensor = build_frames_sensor(policy)
    resources = {"kafka": kafka, "storage": storage, "detector": detector or DetectorResource()}
    runs = []
    for _ in range(max_ticks):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"kafka": kafka})
        result = sensor(context)
        requests = getattr(result, "run_requests", None) or []
        cursor = getattr(result, "cursor", None) or cursor
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


def landing_records(storage) -> list[dict]:
    store = storage.open()
    records = []
    for key in store.list(f"{LANDING}/"):
        records += [json.loads(line) for line in store.get(key).splitlines() if line.strip()]
    return records


def landing_files(storage) -> dict[str, bytes]:
    store = storage.open()
    return {key: store.get(key) for key in store.list(f"{LANDING}/")}
