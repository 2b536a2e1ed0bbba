"""The MQTT bridge: camera images published to MQTT become frames on Kafka, none lost, none twice.

Each message's payload is an image. The bridge stores it under `frames/` (the claim check) and sends
the frame message to Kafka with `acks=all`, like every producer; only once Kafka has acknowledged it
does it acknowledge the MQTT message (QoS 1, a persistent session, manual acknowledgement). A bridge
killed mid-stream loses nothing: the broker delivers what was not acknowledged again. A redelivery
lands once: a frame's id is derived from its bytes, its capture time is the one first given to it
(kept in a journal written before the frame is sent), and the producer's ledger knows what Kafka
acknowledged. A frame sent but not yet recorded when the bridge died goes out again as the very same
message, which the warehouse keeps once.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from imgpipeline import ConfigError
from imgpipeline.ingest.messages import FRAME_ID, iso_utc, parse_time, sha256_hex
from imgpipeline.ingest.producer import Frame, FrameProducer, ledger_for

TOPIC_FILTER = re.compile(r"^[^#+]*(\+[^#+]*)*(#)?\Z")


def source_of(topic: str, topic_filter: str, fixed: str | None) -> str:
    """The source id of a message: the configured one, else the topic level the filter's first `+`
    stands for (`cameras/+/frames` on `cameras/cam7/frames` gives cam7)."""
    if fixed:
        return fixed
    levels, wanted = topic.split("/"), topic_filter.split("/")
    for level, pattern in zip(levels, wanted, strict=False):
        if pattern == "+":
            return level
    raise ConfigError(f"topic {topic_filter!r} names no source: give --source or a `+` level")


class Journal:
    """The capture time first given to each frame id, appended before the frame is sent."""

    def __init__(self, path):
        self.path, self.times = path, {}
        if path.exists():
            for line in path.read_text().splitlines():
                frame_id, _, when = line.partition(" ")
                if when:
                    self.times[frame_id] = when

    def captured(self, frame_id: str) -> datetime:
        when = self.times.get(frame_id)
        if when is None:
            when = self.times[frame_id] = iso_utc(datetime.now(UTC))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as handle:
                handle.write(f"{frame_id} {when}\n")
                handle.flush()
                os.fsync(handle.fileno())
        return parse_time(when)


@dataclass
class Received:
    mid: int
    topic: str
    topic_filter: str
    payload: bytes


class MqttBridge:
    """Subscribes, stores and sends, then acknowledges; `run` until stopped or `limit` messages."""

    def __init__(self, kafka, storage, topics: list[str], *, source: str | None = None,
                 client_id: str = "imgpipeline-bridge", settings=None,
                 batch: int = 25, log=print):
        for topic in topics:
            if not topic or not TOPIC_FILTER.match(topic):
                raise ConfigError(f"{topic!r} is not an MQTT topic filter")
            if not source and "+" not in topic.split("/"):
                raise ConfigError(f"topic {topic!r} has no `+` level to take the source id from: give "
                                  "--source")
        if source and not FRAME_ID.match(source):
            raise ConfigError(f"--source {source!r} is not a source id ({FRAME_ID.pattern})")
        self.kafka, self.storage, self.topics, self.source = kafka, storage, topics, source
        self.client_id, self.batch, self.log = client_id, batch, log
        self.settings = settings  # resources.mqtt.MqttSettings: the broker, the login, TLS
        self.inbox: queue.Queue[Received] = queue.Queue()
        self.settled = threading.Event()  # the subscriptions confirmed, or `failure` says why not
        self.answered, self.failure = False, None
        self.producers: dict[str, FrameProducer] = {}
        self.forwarded = 0
        # Monotonic times of this run's first message taken and of Kafka's acknowledgement of its last.
        self.first_at: float | None = None
        self.acked_at: float | None = None

    def _fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
        self.settled.set()

    def _client(self):
        import paho.mqtt.client as mqtt

        client = self.settings.client(self.client_id, clean_session=False, manual_ack=True)

        def on_connect(client, userdata, flags, reason_code, properties):
            self.answered = True
            if reason_code.is_failure:
                self._fail(self.settings.refusal(reason_code))
                return
            client.subscribe([(topic, 1) for topic in self.topics])

        def on_disconnect(client, userdata, flags, reason_code, properties):
            if not self.answered:  # e.g. a TLS listener that got no TLS
                self._fail(self.settings.closed_early(reason_code))

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            if any(code.is_failure for code in reason_codes):
                self._fail(f"the MQTT broker at {self.settings.broker} refused the subscription to "
                           f"{', '.join(self.topics)} ({', '.join(map(str, reason_codes))}): may this login "
                           "read those topics?")
            else:
                self.settled.set()

        def on_message(client, userdata, message):
            topic_filter = next((t for t in self.topics if mqtt.topic_matches_sub(t, message.topic)), "")
            self.inbox.put(Received(message.mid, message.topic, topic_filter, bytes(message.payload)))

        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        client.on_subscribe, client.on_message = on_subscribe, on_message
        return client

    def run(self, limit: int | None = None, idle_s: float | None = None, ready=None) -> int:
        """Forward messages until `limit` were forwarded or nothing came for `idle_s` seconds; `ready` is
        called once the broker confirmed the subscriptions (from then on nothing published is missed).
        A broker that refuses the login, the TLS handshake or the subscriptions raises a ConfigError that
        says what to fix."""
        self.producers, self.journals, self.forwarded = {}, {}, 0
        self.first_at = self.acked_at = None
        self.answered, self.failure = False, None
        self.settled.clear()
        client = self._client()
        self.settings.connect(client)
        client.loop_start()
        try:
            if not self.settled.wait(30):
                raise ConfigError(f"the MQTT broker at {self.settings.broker} did not confirm the "
                                  f"subscriptions to {', '.join(self.topics)} within 30 s")
            if self.failure:
                raise ConfigError(self.failure)
            if ready is not None:
                ready()
            last = time.monotonic()
            while limit is None or self.forwarded < limit:
                if self.failure:  # refused when it connected again
                    raise ConfigError(self.failure)
                taken = self._take()
                if not taken:
                    if idle_s is not None and time.monotonic() - last > idle_s:
                        break
                    continue
                last = time.monotonic()
                self.first_at = self.first_at or last
                self._forward(client, taken)
                self.acked_at = time.monotonic()
        finally:
            for producer in self.producers.values():
                producer.close()
            client.loop_stop()
            client.disconnect()
        return self.forwarded

    def _take(self) -> list[Received]:
        taken = []
        try:
            taken.append(self.inbox.get(timeout=0.2))
            while len(taken) < self.batch:
                taken.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        return taken

    def _forward(self, client, taken: list[Received]) -> None:
        from imgpipeline.vision.quality import UndecodableImage, header_size

        for message in taken:
            if not message.topic_filter:
                # The persistent session kept a subscription of an earlier run with other --topic
                # values: nothing of this run asked for it, so it is acknowledged and dropped.
                self.log(f"bridge: topic {message.topic!r} matches none of {', '.join(self.topics)} "
                         "(a subscription kept from an earlier run); dropped")
                continue
            source = source_of(message.topic, message.topic_filter, self.source)
            if not FRAME_ID.match(source):
                self.log(f"bridge: topic {message.topic!r}: {source!r} is not a source id; dropped")
                continue
            producer = self.producers.get(source)
            if producer is None:
                producer = self.producers[source] = FrameProducer(self.kafka, self.storage, source)
                self.journals[source] = Journal(ledger_for(self.kafka.frames_topic, source).path
                                                .with_suffix(".captured"))
            try:
                width, height = header_size(message.payload)
            except UndecodableImage:
                width = height = None  # not an image: the run says so (an error record and a dead letter)
            digest = sha256_hex(message.payload)
            frame_id = f"{source}-{digest[:20]}"
            captured = self.journals[source].captured(frame_id)
            producer.send(Frame(frame_id, message.payload, captured, width, height))
        for producer in self.producers.values():
            producer.flush()  # acks=all: Kafka has every frame of the batch
        for message in taken:
            client.ack(message.mid, 1)
        self.forwarded += len(taken)
