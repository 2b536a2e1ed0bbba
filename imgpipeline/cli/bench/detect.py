"""`imgpipeline bench detect` and `bench detector`: one run against a bare detector loop, and
the detector engines against the reference on the same frames."""

from __future__ import annotations

import time

from imgpipeline import ConfigError
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

    from imgpipeline.configuration import Settings
    from imgpipeline.defs.streaming.detect_frames import detect_frames, detect_run_config

    resources = Settings.from_env().checked().resources()
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


# What `bench detector` compares by default: the reference first, then each engine and precision.
VARIANTS = ("opencv", "onnxruntime", "openvino:f32", "openvino:default", "openvino:int8")


def _engine_figures(variant: str, input_size: int, images: list) -> dict:
    """In a fresh process: one engine's pool over the frames in threads, as a run uses it."""
    from imgpipeline.cli.quantize import timed
    from imgpipeline.resources import DetectorResource

    def rss_mb() -> float:
        with open("/proc/self/status") as status:
            return next((int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:")), 0.0)

    engine, _, precision = variant.partition(":")
    before = rss_mb()
    pool = DetectorResource(engine=engine, precision=precision or "default",
                            input_size=input_size).load_pool()
    timed(pool, images[:pool.size * 2])  # warm-up: first inferences allocate
    found, fps = timed(pool, images)
    return {"fps": fps, "rss_added_mb": rss_mb() - before, "workers": pool.size,
            "precision": pool.identity.precision, "detections": found}


def bench_detector(frames: int = 254, variants: tuple[str, ...] = VARIANTS, input_size: int = 416,
                   rounds: int = 1) -> dict:
    """Engines and precisions on the same frames: frames/s, memory, agreement with the reference.

    The frames are those the INT8 model is scored on, held apart from its calibration (bikes.mp4's
    frames 125–249 and the two photos), each once for agreement and as many times as `frames` asks
    for frames/s. Each variant runs in its own process (its memory is its own), `rounds` times
    interleaved; the first variant is the reference the others are compared with.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from statistics import median

    from imgpipeline.cli.quantize import frames as sample_frames
    from imgpipeline.vision import int8
    from imgpipeline.vision.agreement import CONFIDENT, LOOSE_IOU, MATCH_IOU, compare

    held = sample_frames(int8.HELD_APART, int8.PHOTOS)[:frames]
    images = [held[i % len(held)] for i in range(frames)]
    spawn = multiprocessing.get_context("spawn")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    skipped: dict[str, str] = {}
    for number in range(rounds):
        for variant in [v for v in variants if v not in skipped]:
            print(f"round {number + 1}/{rounds}: {variant} over {frames} frames …", flush=True)
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as process:
                try:
                    figures = process.submit(_engine_figures, variant, input_size, images).result()
                    runs[variant].append(figures)
                except ConfigError as error:  # e.g. an INT8 model not proven here: the others still run
                    if variant == variants[0]:
                        raise
                    skipped[variant] = str(error)
                    print(f"  {variant} skipped: {error}", flush=True)
    variants = tuple(v for v in variants if v not in skipped)
    reference = runs[variants[0]][0]["detections"][:len(held)]
    result = {"frames": frames, "distinct_frames": len(held), "scored_on": int8.SCORED_ON,
              "input_size": input_size, "rounds": rounds, "reference": variants[0],
              "match": f"same class, IoU >= {MATCH_IOU}; loosely, IoU >= {LOOSE_IOU} (`loose`, with the "
                       f"recall of each class and the reference's boxes of confidence >= {CONFIDENT} missed)",
              "variants": {}, "skipped": skipped}
    print(f"\n{'engine':<20}{'precision':>10}{'workers':>8}{'frames/s':>10}{'× ref':>7}{'RSS MB':>8}"
          f"{'boxes':>7}{f'IoU≥{MATCH_IOU}':>10} {f'IoU≥{LOOSE_IOU}':>10} {f'≥{CONFIDENT} lost':>10}"
          f"{'max Δconf':>10}  unmatched scores (reference | this)")
    base = median(r["fps"] for r in runs[variants[0]])
    for variant in variants:
        figures = runs[variant]
        found = figures[0]["detections"][:len(held)]
        agreement, loose = (compare(reference, found, at_iou=iou).summary() for iou in (MATCH_IOU, LOOSE_IOU))
        fps = median(r["fps"] for r in figures)
        row = {"precision": figures[0]["precision"], "workers": figures[0]["workers"], "fps": round(fps, 2),
               "fps_each": [round(r["fps"], 2) for r in figures], "speedup": round(fps / base, 2),
               "rss_added_mb": round(median(r["rss_added_mb"] for r in figures), 1), **agreement,
               "loose": loose}
        result["variants"][variant] = row
        unmatched = (f"{' '.join(map(str, row['unmatched_reference_scores'][:8]))} | "
                     f"{' '.join(map(str, row['unmatched_scores'][:8]))}")
        print(f"{variant:<20}{row['precision']:>10}{row['workers']:>8}{fps:>10.2f}{row['speedup']:>7.2f}"
              f"{row['rss_added_mb']:>8.0f}{row['boxes']:>7}{row['matched']:>6}/{row['reference_boxes']:<4}"
              f"{loose['matched']:>6}/{loose['reference_boxes']:<4}{loose['confident_missed']:>10}"
              f"{row['max_confidence_diff']:>10.3f}  {unmatched}")
        short = {name: recall for name, recall in loose["recall_per_class"].items() if recall < 1}
        if short:
            print(f"{'':<20}classes recalled short of all at IoU ≥ {LOOSE_IOU}: "
                  + ", ".join(f"{name} {recall:.0%}" for name, recall in short.items()))
        if row["mean_confidence_diff"]:
            print(f"{'':<20}confidence differences of matched boxes: mean {row['mean_confidence_diff']:.4f}, "
                  f"p95 {row['p95_confidence_diff']:.4f}, max {row['max_confidence_diff']:.4f}")
    print(f"\nframes: {int8.SCORED_ON}, {len(held)} distinct, {frames} timed; agreement over each once")
    write_result("detector", result)
    return result
