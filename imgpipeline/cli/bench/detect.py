"""`imgpipeline bench detect` and `bench detector`: one run against a bare detector loop, and
the detector's input sizes."""

from __future__ import annotations

import time

from imgpipeline.cli.bench.common import (
    bare_fps,
    bench_frames,
    fresh_topic_and_store,
    send_backlog,
    write_result,
)


def bench_detect(frames: int = 500) -> dict:
    """One detect_frames run over `frames` frames next to a bare decode+detect loop."""
    import dagster as dg

    from imgpipeline.defs.resources import resources_from_env
    from imgpipeline.defs.streaming.detect_frames import detect_frames, detect_run_config

    resources = resources_from_env()
    kafka, storage, folder = fresh_topic_and_store(resources["kafka"], "detect")
    batch = bench_frames(frames)
    send_backlog(kafka, storage, folder, batch)

    bare_s = frames / bare_fps(batch, resources["detector"].load())

    run_config = detect_run_config(kafka.frames_topic, 0, 0, frames)
    with dg.instance_for_test() as instance:
        started = time.perf_counter()
        outcome = detect_frames.execute_in_process(
            run_config=run_config, instance=instance,
            resources={**resources, "kafka": kafka, "storage": storage},
        )
        run_s = time.perf_counter() - started
    assert outcome.success
    result = {
        "frames": frames,
        "bare_fps": round(frames / bare_s, 2),
        "run_fps": round(frames / run_s, 2),
        "run_over_bare": round(bare_s / run_s, 3),
        "frame_size": f"{batch[0].width}x{batch[0].height}",
    }
    print(f"bare decode+detect loop: {result['bare_fps']} frames/s")
    print(f"detect_frames run (in process, Kafka + storage + landing): {result['run_fps']} frames/s "
          f"({result['run_over_bare']:.0%} of bare)")
    write_result("detect", result)
    return result


def bench_detector(frames: int = 100) -> dict:
    """Input sizes 320/416/608: frames/s and objects found on the same frames."""
    from imgpipeline.resources import DetectorResource
    from imgpipeline.vision.quality import decode_image

    images = [decode_image(f.data) for f in bench_frames(frames)]
    result = {"frames": frames, "sizes": {}}
    print(f"{'size':>6}{'frames/s':>10}{'objects':>9}")
    for size in (320, 416, 608):
        detector = DetectorResource(input_size=size).load()
        started = time.perf_counter()
        objects = sum(len(detector.detect(image)) for image in images)
        fps = frames / (time.perf_counter() - started)
        result["sizes"][str(size)] = {"fps": round(fps, 2), "objects": objects}
        print(f"{size:>6}{fps:>10.2f}{objects:>9}")
    write_result("detector", result)
    return result
