"""Send frames to Kafka: store the bytes first (claim check), then the message.

A ledger of sent frames (frame id and sha256, appended after the broker acknowledged
them) makes re-running a producer over the same input send nothing twice; a frame
already stored with the same sha256 is not uploaded again.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from imgpipeline.ingest.messages import FrameMessage, frame_key, iso_utc, sha256_hex
from imgpipeline.paths import state_dir


@dataclass(frozen=True)
class Frame:
    """One frame from a source, ready to send."""

    frame_id: str
    data: bytes
    captured: datetime
    width: int
    height: int


@dataclass
class ProduceSummary:
    sent: int = 0
    already_present: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"sent {self.sent}, already present {self.already_present}, failed {self.failed}"


class Ledger:
    """Frames this source has sent to this topic, one `frame_id sha256` line each."""

    def __init__(self, path: Path):
        self.path = path
        self.sent: set[tuple[str, str]] = set()
        if path.exists():
            for line in path.read_text().splitlines():
                frame_id, _, digest = line.partition(" ")
                self.sent.add((frame_id, digest))

    def __contains__(self, item: tuple[str, str]) -> bool:
        return item in self.sent

    def add(self, items: list[tuple[str, str]]) -> None:
        if not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.writelines(f"{frame_id} {digest}\n" for frame_id, digest in items)
        self.sent.update(items)


def ledger_for(topic: str, source_id: str) -> Ledger:
    return Ledger(state_dir() / "producers" / topic / f"{source_id}.sent")


class FrameProducer:
    """Stores and sends frames of one source; flushes in batches, then records them as sent."""

    def __init__(self, kafka, storage, source_id: str, *, inline: bool = False,
                 flush_every: int = 50, ledger: Ledger | None = None):
        self.kafka = kafka
        self.store = storage.open()
        self.source_id = source_id
        self.inline = inline
        self.flush_every = flush_every
        self.ledger = ledger or ledger_for(kafka.frames_topic, source_id)
        self.producer = kafka.producer()
        self.summary = ProduceSummary()
        self._unflushed: list[tuple[str, str]] = []

    def message(self, frame: Frame, digest: str, uri: str | None) -> FrameMessage:
        return FrameMessage(
            frame_id=frame.frame_id,
            source_id=self.source_id,
            captured_at=iso_utc(frame.captured),
            uri=uri,
            sha256=digest,
            width=frame.width,
            height=frame.height,
        )

    def send(self, frame: Frame) -> bool:
        """Send one frame unless the ledger has it; True when it was sent."""
        digest = sha256_hex(frame.data)
        if (frame.frame_id, digest) in self.ledger:
            self.summary.already_present += 1
            return False
        key = self.source_id.encode()
        if self.inline:
            message = self.message(frame, digest, None)
            self.producer.send(self.kafka.frames_topic, key=key, value=frame.data,
                               headers=message.to_headers())
        else:
            object_key = frame_key(self.source_id, frame.captured, frame.frame_id)
            stored = self.store.put_new(object_key, frame.data, sha256=digest)
            if stored not in (None, digest):  # a stored frame is never replaced by other bytes
                self.summary.failed += 1
                self.summary.failures.append(
                    f"{frame.frame_id}: {object_key} already holds a different frame (sha256 "
                    f"{stored[:12]}…); give this frame another id or another capture date")
                return False
            message = self.message(frame, digest, self.store.uri(object_key))
            self.producer.send(self.kafka.frames_topic, key=key, value=message.to_json())
        self._unflushed.append((frame.frame_id, digest))
        self.summary.sent += 1
        if len(self._unflushed) >= self.flush_every:
            self.flush()
        return True

    def flush(self) -> None:
        """Wait for the broker's acknowledgement (acks=all), then record the frames as sent."""
        self.producer.flush()
        self.ledger.add(self._unflushed)
        self._unflushed = []

    def close(self) -> None:
        self.flush()
        self.producer.close()

    def send_all(self, frames: Iterable[Frame | Exception], total: int | None = None,
                 progress: bool = True) -> ProduceSummary:
        """Send every frame; a source error (bad file) counts as failed and the rest go on."""
        try:
            for item in _progress(frames, total, enabled=progress):
                if isinstance(item, Exception):
                    self.summary.failed += 1
                    self.summary.failures.append(str(item))
                    continue
                self.send(item)
        finally:
            self.close()
        return self.summary


def _progress(items: Iterable, total: int | None, enabled: bool) -> Iterator:
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    with tqdm(items, total=total, unit="frame", file=sys.stderr, disable=None) as bar:
        yield from bar
