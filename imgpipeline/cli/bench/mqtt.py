"""`imgpipeline bench mqtt`: the MQTT bridge's throughput, JPEGs published with QoS 1 to frames on Kafka."""

from __future__ import annotations

import shutil
import threading
import time
import uuid

from imgpipeline.cli.bench.common import fresh_topic_and_store, local_resources, write_result


def bench_images(count: int, width: int, height: int) -> list[bytes]:
    """`count` distinct JPEGs of width x height: the sample photos resized, each stamped with its number
    (a frame's id is derived from its bytes, so no two may be equal)."""
    import cv2

    from imgpipeline.cli.samples import sample
    from imgpipeline.vision.quality import encode_jpeg

    photos = [cv2.resize(cv2.imread(str(sample(name))), (width, height))
              for name in ("bus.jpg", "zidane.jpg")]
    scale = max(0.3, height / 480)
    found = []
    for i in range(count):
        image = photos[i % len(photos)].copy()
        cv2.putText(image, f"{i:06d}", (4, max(12, height // 10)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), max(1, round(2 * scale)))
        found.append(encode_jpeg(image))
    return found


def landed(kafka) -> int:
    """Messages on the benchmark's topic: the sum of its end offsets."""
    from kafka import TopicPartition

    consumer = kafka.consumer(group_id=None)
    try:
        partitions = [TopicPartition(kafka.frames_topic, p)
                      for p in consumer.partitions_for_topic(kafka.frames_topic)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def bench_mqtt(messages: int = 2000, size: tuple[int, int] = (640, 480), resources: dict | None = None,
               settings=None) -> dict:
    """Publish `messages` JPEGs with QoS 1 while the bridge runs, until all are on Kafka: messages/s and
    MB/s end to end (first publish to the last Kafka acknowledgement), the publish rate and the bridge's
    own rate (its first message to its last acknowledgement). Without resources, the local services are
    set up as for the demo; the MQTT broker is the configured one (the local Mosquitto unless
    the broker setting names another)."""
    from imgpipeline import ConfigError
    from imgpipeline.cli.bridge import mqtt_letter
    from imgpipeline.ingest.mqtt import MqttBridge
    from imgpipeline.ingest.producer import ledger_for
    from imgpipeline.resources.mqtt import MqttSettings

    resources = resources or local_resources()
    settings = settings or MqttSettings.from_env()
    kafka, storage, _ = fresh_topic_and_store(resources["kafka"], "mqtt")
    run = uuid.uuid4().hex[:6]
    width, height = size
    payloads = bench_images(messages, width, height)
    total_mb = sum(map(len, payloads)) / 1e6
    print(f"{messages:,} JPEGs of {width}x{height} ({total_mb * 1000 / messages:.0f} KB each) over MQTT "
          f"{settings.broker} (QoS 1) through the bridge to Kafka {kafka.frames_topic}")

    bridge = MqttBridge(kafka, storage, [f"bench-{run}/+/frames"], letter=mqtt_letter,
                        client_id=f"bench-{run}", settings=settings, log=lambda line: None)
    subscribed, failed = threading.Event(), []

    def forward():
        try:
            bridge.run(limit=messages, idle_s=30, ready=subscribed.set)
        except ConfigError as exc:
            failed.append(exc)
            subscribed.set()

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    subscribed.wait()
    if failed:
        raise failed[0]
    camera = settings.client()
    settings.connect(camera)
    camera.loop_start()
    started = time.monotonic()
    sent = [camera.publish(f"bench-{run}/cam/frames", payload, qos=1) for payload in payloads]
    for info in sent:
        info.wait_for_publish(timeout=120)
    published = time.monotonic()
    thread.join()
    camera.loop_stop()
    camera.disconnect()
    if failed:
        raise failed[0]
    shutil.rmtree(ledger_for(kafka.frames_topic, "cam").path.parent, ignore_errors=True)

    end_to_end_s = (bridge.acked_at or published) - started
    result = {
        "messages": messages,
        "size": f"{width}x{height}",
        "mb": round(total_mb, 2),
        "topic": kafka.frames_topic,
        "landed": landed(kafka),
        "forwarded": bridge.forwarded,
        "end_to_end_messages_per_s": round(bridge.forwarded / end_to_end_s, 1),
        "end_to_end_mb_per_s": round(total_mb * bridge.forwarded / messages / end_to_end_s, 2),
        "publish_messages_per_s": round(messages / (published - started), 1),
        "bridge_messages_per_s": round(bridge.forwarded / ((bridge.acked_at or published)
                                                            - (bridge.first_at or started)), 1),
    }
    print(f"published: {messages:,} in {published - started:.2f} s = "
          f"{result['publish_messages_per_s']:,.0f} messages/s")
    print(f"end to end (first publish to last Kafka ack): {bridge.forwarded:,} in {end_to_end_s:.2f} s = "
          f"{result['end_to_end_messages_per_s']:,.0f} messages/s, {result['end_to_end_mb_per_s']:.1f} MB/s")
    print(f"bridge (its first message to its last Kafka ack): {result['bridge_messages_per_s']:,.0f} "
          "messages/s")
    print(f"landed on Kafka: {result['landed']:,} of {messages:,}")
    write_result("mqtt", result)
    return result
