"""`bench chaos`'s cameras: the street video and the sample photos sent at a steady rate through
producers that send again what the broker did not acknowledge, and photos published to Mosquitto.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

STREET = "street-cam"  # the camera zones.yaml and alerts.yaml speak of


PHOTOS = ("dock", "gate")


MQTT_CAMERA = "yard"


class Camera:
    """One camera's producer: a frame every 1/rate s; what the broker did not acknowledge is sent again
    with the next one. A producer that fails (its ledger on a full disk) is opened again, as a camera's
    service would be started again."""

    def __init__(self, chaos, source: str, frames, rate: float):
        self.chaos, self.source, self.frames, self.rate = chaos, source, frames, rate
        self.sent: set[str] = set()  # every frame given to the producer: each must become one row
        self.pending: list = []
        self.failures = Counter()
        self.crashed: str | None = None
        self.thread = threading.Thread(target=self.run, name=source, daemon=True)

    def going(self) -> bool:
        """Sending: until the cameras stop, then until what is pending went (at most until drain_by)."""
        if not self.chaos.stopping.is_set():
            return True
        return bool(self.pending) and time.monotonic() < self.chaos.drain_by

    def run(self) -> None:
        try:
            self.send()
        except Exception as exc:  # a camera that stops sending is a result, never a silent thread
            self.crashed = f"{type(exc).__name__}: {exc}"

    def send(self) -> None:
        producer, started, n = None, time.monotonic(), 0
        while self.going():
            if not self.chaos.stopping.is_set():
                frame = next(self.frames)
                self.sent.add(frame.frame_id)
                self.pending.append(frame)
            try:
                producer = producer or self.chaos.producer(self.source)
                for frame in self.pending:
                    producer.send(frame)
                done = {o.frame_id for o in producer.flush() if o.failure is None}
                self.pending = [f for f in self.pending if f.frame_id not in done]
            except Exception as exc:  # the camera's process fails; its service starts it again
                self.failures[type(exc).__name__] += 1
                with contextlib.suppress(Exception):
                    producer.producer.close(timeout=0)
                producer = None
            n += 1
            time.sleep(max(0.0, started + n / self.rate - time.monotonic()))


class MqttCamera(Camera):
    """A camera publishing photos (each different) to Mosquitto at QoS 1; one not acknowledged is
    published again. Its frames' ids are the bridge's: the source and the payload's digest."""

    def send(self) -> None:
        from imgpipeline.resources.mqtt import MqttSettings

        settings = MqttSettings.from_env()
        client = settings.client(f"chaos-camera-{uuid.uuid4().hex[:6]}")
        settings.connect(client)
        client.loop_start()
        started, n = time.monotonic(), 0
        try:
            while self.going():
                if not self.chaos.stopping.is_set():
                    payload = next(self.frames)
                    self.sent.add(f"{self.source}-{hashlib.sha256(payload).hexdigest()[:20]}")
                    self.pending.append(payload)
                self.pending = [p for p in self.pending if not self.published(client, p)]
                n += 1
                time.sleep(max(0.0, started + n / self.rate - time.monotonic()))
        finally:
            client.loop_stop()

    def published(self, client, payload: bytes) -> bool:
        try:
            info = client.publish(f"cameras/{self.source}/frames", payload, qos=1)
            info.wait_for_publish(timeout=5)
            return info.is_published()
        except Exception as exc:  # not connected (Mosquitto away), or the client's own failure: again
            self.failures[type(exc).__name__] += 1
            return False


def street_frames():
    """bikes.mp4's frames as the street camera's, over and over, captured now."""
    from imgpipeline.cli.samples import sample
    from imgpipeline.ingest.producer import Frame
    from imgpipeline.ingest.sources import video_frames

    video = list(video_frames(str(sample("bikes.mp4")), STREET, start=datetime.now(UTC)))
    tag = uuid.uuid4().hex[:6]
    for n in range(10**9):
        f = video[n % len(video)]
        yield Frame(f"{STREET}-{tag}-{n:06d}", f.data, datetime.now(UTC), f.width, f.height)


def photos(source: str):
    """The sample photos in turn, captured now."""
    from imgpipeline.cli.samples import sample
    from imgpipeline.ingest.producer import Frame
    from imgpipeline.vision.quality import decode_image

    images = [sample(name).read_bytes() for name in ("bus.jpg", "zidane.jpg")]
    sizes = [decode_image(data).shape[:2] for data in images]
    tag = uuid.uuid4().hex[:6]
    for n in range(10**9):
        (height, width), data = sizes[n % 2], images[n % 2]
        yield Frame(f"{source}-{tag}-{n:06d}", data, datetime.now(UTC), width, height)


def mqtt_photos():
    """Small photos, each with its number drawn in: no two alike."""
    import cv2
    import numpy as np

    from imgpipeline.vision.quality import encode_jpeg

    tag = uuid.uuid4().hex[:6]
    for n in range(10**9):
        image = np.full((120, 160, 3), 60 + n % 150, np.uint8)
        cv2.putText(image, f"{tag} {n}", (4, 60), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        yield encode_jpeg(image)
