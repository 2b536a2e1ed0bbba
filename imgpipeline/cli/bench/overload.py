"""`imgpipeline bench overload`: input at several times the detection rate through the whole pipeline
(a real daemon, sensor and runs), with shedding on and, for comparison, off."""

from __future__ import annotations

import os
from collections import Counter

from imgpipeline.cli.bench.common import (
    bare_fps,
    bench_frames,
    fresh_topic_and_store,
    local_resources,
    write_result,
)
from imgpipeline.lib.stats import percentile


def overload_leg(resources: dict, fps: float, factor: float, seconds: float, shed_after_s: float) -> dict:
    """`factor` × the bare detection rate for `seconds`; what became of every frame, and how late."""
    from imgpipeline.cli.bench.pipeline import run_pipeline
    from imgpipeline.defs.records.reader import all_records
    from imgpipeline.defs.streaming.batch_policy import BatchPolicy
    from imgpipeline.ingest.messages import parse_time
    from imgpipeline.resources.settings import env_name

    shed_env = env_name(BatchPolicy, "shed_after_s")
    rate = fps * factor
    frames = bench_frames(round(rate * seconds))
    kafka, storage, _ = fresh_topic_and_store(resources["kafka"], "overload")
    saved = os.environ.get(shed_env)
    os.environ[shed_env] = str(shed_after_s)
    try:
        timing = run_pipeline(frames, kafka, storage, rate, timeout_s=seconds * factor * 3 + 300,
                              flush_every=10)
    finally:
        if saved is None:
            os.environ.pop(shed_env, None)
        else:
            os.environ[shed_env] = saved
    records = all_records(storage.open())
    statuses = Counter(r.status for r in records)
    waits = sorted((parse_time(r.processed_at) - parse_time(r.ingested_at)).total_seconds() for r in records)
    last = sorted(records, key=lambda r: r.ingested_at)[-max(1, len(records) // 10):]
    late = [(parse_time(r.processed_at) - parse_time(r.ingested_at)).total_seconds() for r in last]
    sent = timing["sent_at"]
    return {
        "factor": factor, "shed_after_s": shed_after_s, "frames": len(frames),
        "input_fps": round(len(sent) / (max(sent.values()) - min(sent.values())), 1),
        "records": len(records), "distinct": len({r.frame_id for r in records}),
        "detected": statuses["detected"] + statuses["skipped_dark"], "shed": statuses["shed"],
        "errors": statuses["error"], "shed_share": round(statuses["shed"] / max(1, len(records)), 3),
        "wait_p50_s": round(percentile(waits, 0.5), 1), "wait_p95_s": round(percentile(waits, 0.95), 1),
        "wait_max_s": round(waits[-1], 1), "wait_last_tenth_p50_s": round(percentile(late, 0.5), 1),
        "drained_after_s": round(max(timing["done_at"].values()) - min(sent.values()), 1),
        "runs": timing["runs"]["runs"], "run_peak_rss_mb": run_peak_rss(timing["dagster_home"]),
    }


def run_peak_rss(dagster_home) -> float | None:
    """The largest peak memory any detect_frames run of the leg reported."""
    import dagster as dg

    from imgpipeline.lib.instance import open_instance

    peaks = []
    with open_instance(dagster_home) as instance:
        for record in instance.get_run_records(dg.RunsFilter(job_name="detect_frames")):
            outputs = instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_OUTPUT)
            for entry in outputs:
                metadata = entry.dagster_event.step_output_data.metadata
                if "peak_rss_mb" in metadata:
                    peaks.append(metadata["peak_rss_mb"].value)
    return max(peaks) if peaks else None


def bench_overload(factors: tuple[float, ...] = (2.0, 5.0), seconds: float = 30.0,
                   shed_after_s: float = 5.0, resources: dict | None = None) -> dict:
    """Each factor with shedding on; the first also with shedding off, for comparison."""
    from imgpipeline.resources import DetectorResource

    resources = resources or local_resources()
    detector = DetectorResource.from_env().model_copy(update={"threads": 0}).load()
    fps = bare_fps(bench_frames(150), detector)
    print(f"bare detector: {fps:.1f} frames/s; input at {', '.join(f'{f:g}×' for f in factors)} that "
          f"for {seconds:g} s, shedding past {shed_after_s:g} s on the topic")
    legs = [(factors[0], 0.0)] + [(f, shed_after_s) for f in factors]
    results = []
    for factor, shed in legs:
        print(f"  {factor:g}× with shedding {f'past {shed:g} s' if shed else 'off'} …")
        results.append(overload_leg(resources, fps, factor, seconds, shed))
    print_overload(fps, results)
    result = {"bare_fps": round(fps, 1), "seconds": seconds, "legs": results}
    write_result("overload", result)
    return result


def print_overload(fps: float, legs: list[dict]) -> None:
    print(f"\n{'input':>10} {'shedding':>9} {'frames':>7} {'records':>8} {'detected':>9} {'shed':>6} "
          f"{'wait p50':>9} {'p95':>6} {'max':>6} {'last 10%':>9} {'drained':>8} {'run RSS':>8}")
    for leg in legs:
        shed = f"{leg['shed_after_s']:g} s" if leg["shed_after_s"] else "off"
        print(f"{leg['input_fps']:>6.1f} f/s {shed:>9} {leg['frames']:>7} {leg['records']:>8} "
              f"{leg['detected']:>9} {leg['shed']:>6} {leg['wait_p50_s']:>8.1f}s "
              f"{leg['wait_p95_s']:>5.1f}s {leg['wait_max_s']:>5.1f}s {leg['wait_last_tenth_p50_s']:>8.1f}s "
              f"{leg['drained_after_s']:>7.1f}s {leg['run_peak_rss_mb'] or 0:>6.0f}MB")
    print(f"(bare detector {fps:.1f} frames/s; wait = processed − reached the broker; every frame is one "
          "record, detected or shed)")
