"""`imgpipeline bench …`: figures, printed and written to `.imgpipeline/bench/`; never asserted."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from imgpipeline.config import Settings, state_dir


def write_result(name: str, result: dict) -> Path:
    folder = state_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {path}")
    return path


def bench_sensor(messages: int = 1_000_000) -> dict:
    """Tick time of frames_sensor over a backlog of `messages` on a fresh topic."""
    import dagster as dg

    from imgpipeline.definitions import build_resources
    from imgpipeline.resources import KafkaResource
    from imgpipeline.sensors.frames_sensor import BatchPolicy, build_frames_sensor

    settings = Settings.from_env()
    base = build_resources(settings)["kafka"]
    kafka = KafkaResource(**{**base.model_dump(), "frames_topic": f"bench-{uuid.uuid4().hex[:8]}"})
    kafka.ensure_topics(partitions=1)
    print(f"producing {messages:,} small messages to {kafka.frames_topic} …")
    started = time.perf_counter()
    producer = kafka.producer(acks=1, linger_ms=50, batch_size=1 << 20)
    value = b'{"schema":1}'
    for _ in range(messages):
        producer.send(kafka.frames_topic, value=value)
    producer.flush()
    producer.close()
    print(f"  produced in {time.perf_counter() - started:.1f} s")

    sensor = build_frames_sensor(BatchPolicy())
    ticks = []
    cursor = None
    with dg.instance_for_test() as instance:
        for _ in range(3):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"kafka": kafka})
            started = time.perf_counter()
            result = sensor(context)
            ticks.append(time.perf_counter() - started)
            cursor = getattr(result, "cursor", None) or cursor
    admin = kafka.admin()
    try:
        admin.delete_topics([kafka.frames_topic, kafka.dlq_topic])
    finally:
        admin.close()
    result = {"backlog": messages, "tick_s": [round(t, 3) for t in ticks], "max_tick_s": round(max(ticks), 3)}
    print(f"sensor tick with a backlog of {messages:,}: " + ", ".join(f"{t:.3f} s" for t in ticks))
    write_result("sensor", result)
    return result


def bench_detect(frames: int = 500) -> dict:
    """One detect_frames run over `frames` frames next to a bare decode+detect loop."""
    import dagster as dg

    from imgpipeline.definitions import build_resources
    from imgpipeline.fetch import sample
    from imgpipeline.ingest.producer import FrameProducer, Ledger
    from imgpipeline.ingest.sources import video_frames
    from imgpipeline.jobs.detect_frames import detect_frames
    from imgpipeline.resources import KafkaResource, StorageResource
    from imgpipeline.vision.quality import decode_image

    settings = Settings.from_env()
    resources = build_resources(settings)
    kafka = KafkaResource(**{**resources["kafka"].model_dump(),
                             "frames_topic": f"bench-{uuid.uuid4().hex[:8]}"})
    kafka.ensure_topics(partitions=1)
    folder = Path(tempfile.mkdtemp(prefix="imgpipeline-bench-"))
    storage = StorageResource(uri=(folder / "store").as_uri())
    video = list(video_frames(str(sample("bikes.mp4")), "bench", start=datetime.now(UTC)))
    batch = [video[i % len(video)] for i in range(frames)]
    batch = [type(f)(f"bench-{i:06d}", f.data, f.captured, f.width, f.height) for i, f in enumerate(batch)]
    FrameProducer(kafka, storage, "bench", ledger=Ledger(folder / "ledger")).send_all(batch, progress=False)

    detector = resources["detector"].load()
    started = time.perf_counter()
    for frame in batch:
        detector.detect(decode_image(frame.data))
    bare_s = time.perf_counter() - started

    run_config = {"ops": {"detect": {"config": {
        "topic": kafka.frames_topic, "partition": 0, "start_offset": 0, "end_offset": frames}}}}
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
