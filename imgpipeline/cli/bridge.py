"""`imgpipeline bridge mqtt`: camera images from MQTT topics to frames on Kafka."""

from __future__ import annotations


def _stop(signum, frame):
    raise KeyboardInterrupt


def mqtt_letter(topic: str, payload: bytes, reason: str, sender: str) -> tuple[bytes, bytes]:
    """The dead letter (key, value) of an MQTT message the bridge cannot forward, in the run path's format:
    `topic` is the MQTT topic, partition and offset are -1 (not read from Kafka). The key is the topic and
    the payload's sha256, so the letter of a message delivered again replaces the first in the compacted
    DLQ."""
    import time

    from imgpipeline.defs.streaming.dead_letters import dead_letter
    from imgpipeline.defs.streaming.processing import Incoming
    from imgpipeline.ingest.messages import sha256_hex

    incoming = Incoming(topic, -1, -1, None, payload, [], int(time.time() * 1000))
    key = f"mqtt-{sha256_hex(topic.encode())[:16]}-{sha256_hex(payload)}"
    _, value = dead_letter(incoming, reason, sender)  # keyed by the MQTT message, not a Kafka offset
    return key.encode(), value


def bridge(args) -> int:
    import signal

    from imgpipeline.ingest.mqtt import MqttBridge
    from imgpipeline.resources import KafkaResource, StorageResource
    from imgpipeline.resources.mqtt import MqttSettings

    overrides = {"broker": args.broker} if args.broker else {}
    settings = MqttSettings.from_env(**overrides)
    kafka = KafkaResource.from_env()
    kafka.ensure_topics()
    bridge = MqttBridge(kafka, StorageResource.from_env(), args.topic, letter=mqtt_letter, source=args.source,
                        client_id=args.client_id, settings=settings)
    def ready():
        print(f"bridge: subscribed to {', '.join(args.topic)} at {settings.broker} → Kafka "
              f"{kafka.frames_topic} (Ctrl-C stops it; what it has not acknowledged waits in its session)",
              flush=True)

    # SIGTERM (a container's stop) and Ctrl-C end it the same clean way, even when the shell that started
    # it ignored them: producers flushed and closed, the MQTT session left with what is not acknowledged.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _stop)
    try:
        bridge.run(ready=ready)
    finally:
        print(f"bridge: {bridge.forwarded} messages forwarded", flush=True)
    return 0
