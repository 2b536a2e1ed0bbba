"""`imgpipeline bench sensor`: frames_sensor's tick time over a large backlog."""

from __future__ import annotations

import time
import uuid

from imgpipeline.cli.bench.common import write_result


def bench_sensor(messages: int = 1_000_000) -> dict:
    """Tick time of frames_sensor over a backlog of `messages` on a fresh topic."""
    import dagster as dg

    from imgpipeline.defs.streaming.batch_policy import BatchPolicy
    from imgpipeline.defs.streaming.frames_sensor import build_frames_sensor
    from imgpipeline.resources import KafkaResource

    kafka = KafkaResource.from_env(frames_topic=f"bench-{uuid.uuid4().hex[:8]}")
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

    sensor = build_frames_sensor(BatchPolicy(fast_lane=False, watch_s=0))
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
