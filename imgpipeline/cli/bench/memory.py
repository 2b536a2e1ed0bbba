"""`imgpipeline bench memory`: peak memory of a detect_frames run against its batch size."""

from __future__ import annotations

from imgpipeline.cli.bench.common import (
    bench_frames,
    fresh_topic_and_store,
    local_resources,
    send_backlog,
    write_result,
)


def _peak_rss_of_run(kafka_fields: dict, storage_uri: str, frames: int) -> float:
    """In a fresh process: one detect_frames run over offsets [0, frames); the process's peak RSS, MB."""
    import resource

    import dagster as dg

    from imgpipeline.defs.streaming.detect_frames import Screening, detect_frames, detect_run_config
    from imgpipeline.resources import DetectorResource, KafkaResource, StorageResource

    kafka = KafkaResource(**kafka_fields)
    run_config = detect_run_config(kafka.frames_topic, 0, 0, frames)
    with dg.instance_for_test() as instance:
        outcome = detect_frames.execute_in_process(
            run_config=run_config, instance=instance,
            resources={"kafka": kafka, "storage": StorageResource(uri=storage_uri),
                       "detector": DetectorResource.from_env(), "screening": Screening.from_env()},
        )
    if not outcome.success:
        raise SystemExit(f"the detect_frames run over {frames} frames failed")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def bench_memory(sizes: tuple[int, ...] = (10, 500, 2000), resources: dict | None = None) -> dict:
    """Peak memory of a detect_frames run (its own process) against the number of frames in the run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    resources = resources or local_resources()
    result = {"frames": list(sizes), "peak_rss_mb": []}
    spawn = multiprocessing.get_context("spawn")
    print(f"{'frames':>8}{'peak RSS MB':>13}")
    for size in sizes:
        kafka, storage, folder = fresh_topic_and_store(resources["kafka"], "memory")
        send_backlog(kafka, storage, folder, bench_frames(size))
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            peak = pool.submit(_peak_rss_of_run, kafka.model_dump(), storage.uri, size).result()
        result["peak_rss_mb"].append(round(peak, 1))
        print(f"{size:>8}{peak:>13.1f}")
    growth = (result["peak_rss_mb"][-1] - result["peak_rss_mb"][0]) / max(1, sizes[-1] - sizes[0]) * 1000
    result["growth_mb_per_1000_frames"] = round(growth, 2)
    print(f"growth: {growth:.2f} MB per 1,000 frames")
    write_result("memory", result)
    return result
