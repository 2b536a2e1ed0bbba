"""`bench scale`'s synthetic cameras: one small JPEG stored once, and per source `fps` messages a second
referencing it by URI and sha256, each a distinct frame id, keyed by source, each source at its own phase.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

WARM_UP = "warm-up"


def schedule(sources: int, fps: float, seconds: float, seed: int = 7):
    """(offset in s, source index, frame number) in time order: every source at `fps` frames a
    second from its own phase, as cameras started at different moments send."""
    rng = random.Random(seed)
    phases = sorted((rng.random() / fps, index) for index in range(sources))
    for number in range(max(1, round(fps * seconds))):
        for phase, index in phases:
            yield number / fps + phase, index, number


def synthetic_jpeg(width: int = 160, height: int = 120) -> bytes:
    """A small grey gradient: bright enough to be detected (not skipped as dark), cheap to decode."""
    import cv2
    import numpy as np

    row = np.linspace(60, 200, width).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", np.dstack([np.tile(row, (height, 1))] * 3),
                            [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return data.tobytes()


@dataclass
class Frame:
    """The one stored image every synthetic message references."""

    uri: str
    sha256: str
    width: int
    height: int


def source_names(sources: int) -> list[str]:
    width = len(str(sources - 1))
    return [f"cam-{index:0{width}d}" for index in range(sources)]


class Sender(threading.Thread):
    """Every source's frames at their scheduled times (as fast as it can when it falls behind)."""

    def __init__(self, kafka, frame: Frame, sources: int, fps: float, seconds: float):
        super().__init__(name="bench-scale-sender", daemon=True)
        self.kafka, self.frame = kafka, frame
        self.sources, self.fps, self.seconds = sources, fps, seconds
        self.sent = 0
        self.first: float | None = None
        self.last: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from imgpipeline.ingest.messages import FrameMessage, iso_utc

        names = source_names(self.sources)
        producer = self.kafka.producer(linger_ms=20)
        topic, frame = self.kafka.frames_topic, self.frame
        origin, started = time.time(), time.monotonic()
        try:
            for offset, index, number in schedule(self.sources, self.fps, self.seconds):
                delay = started + offset - time.monotonic()
                if delay > 0.002:
                    time.sleep(delay)
                source = names[index]
                message = FrameMessage(
                    frame_id=f"{source}-{number:06d}", source_id=source,
                    captured_at=iso_utc(datetime.fromtimestamp(origin + offset, UTC)),
                    uri=frame.uri, sha256=frame.sha256, width=frame.width, height=frame.height)
                producer.send(topic, key=source.encode(), value=message.to_json())
                self.last = time.time()
                self.first = self.first or self.last
                self.sent += 1
            producer.flush()
        except BaseException as error:  # said by the main thread
            self.error = error
        finally:
            producer.close()


def delete_topics(kafka) -> None:
    """The benchmark's frames topic and its DLQ: a fresh topic of many partitions each time adds up."""
    from kafka.errors import KafkaError

    from imgpipeline import ConfigError

    try:
        admin = kafka.admin()
        try:
            admin.delete_topics([kafka.frames_topic, kafka.dlq_topic])
        finally:
            admin.close()
    except (KafkaError, ConfigError) as error:
        print(f"(the topic {kafka.frames_topic} was not deleted: {error})")
