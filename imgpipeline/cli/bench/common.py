"""What every benchmark shares: scratch folders, results, bench frames, a fresh topic and store, a local
webhook."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from imgpipeline.paths import state_dir

_scratch: list[Path] = []


def scratch_dir(name: str) -> Path:
    """A temporary folder for a benchmark: removed once it succeeds, kept to look into when it fails."""
    folder = Path(tempfile.mkdtemp(prefix=f"imgpipeline-bench-{name}-"))
    _scratch.append(folder)
    return folder


def write_result(name: str, result: dict) -> Path:
    """The figures to `.imgpipeline/bench/<name>.json`; the benchmark's temporary folders go."""
    folder = state_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {path}")
    while _scratch:
        shutil.rmtree(_scratch.pop(), ignore_errors=True)
    return path


def fresh_topic_and_store(kafka, kind: str):
    """A new one-partition topic and an empty local store: no frame is a duplicate of an earlier run's."""
    from imgpipeline.resources import KafkaResource, StorageResource

    kafka = KafkaResource(**{**kafka.model_dump(), "frames_topic": f"bench-{kind}-{uuid.uuid4().hex[:6]}"})
    kafka.ensure_topics(partitions=1)
    folder = scratch_dir(kind)
    return kafka, StorageResource(uri=(folder / "store").as_uri()), folder


def send_backlog(kafka, storage, folder: Path, frames) -> None:
    """All frames to the topic at once, before anything reads them."""
    from imgpipeline.ingest.producer import FrameProducer, Ledger

    producer = FrameProducer(kafka, storage, "bench", ledger=Ledger(folder / "ledger"), flush_every=100)
    producer.send_all(frames, progress=False)
    producer.producer.close()


def bench_frames(count: int):
    """`count` frames of bikes.mp4 (repeated as needed), with unique ids."""
    from imgpipeline.cli.samples import sample
    from imgpipeline.ingest.producer import Frame
    from imgpipeline.ingest.sources import video_frames

    video = list(video_frames(str(sample("bikes.mp4")), "bench", start=datetime.now(UTC)))
    run = uuid.uuid4().hex[:6]
    return [Frame(f"bench-{run}-{i:06d}", f.data, f.captured, f.width, f.height)
            for i, f in enumerate(video[i % len(video)] for i in range(count))]


def send_frames(producer, frames, rate: float | None, sent_at: dict[str, float],
                flush_every: int = 1) -> None:
    """Send at `rate` frames/s (or as fast as possible), recording each send time; at a rate, each
    `flush_every` frames wait for the broker's acknowledgement."""
    started = time.monotonic()
    for index, frame in enumerate(frames):
        if rate:
            time.sleep(max(0.0, started + index / rate - time.monotonic()))
        sent_at[frame.frame_id] = time.time()
        producer.send(frame)
        if rate and (index + 1) % flush_every == 0:
            producer.flush()
    producer.flush()


def bare_fps(frames, detector) -> float:
    from imgpipeline.vision.quality import decode_image

    started = time.perf_counter()
    for frame in frames:
        detector.detect(decode_image(frame.data))
    return len(frames) / (time.perf_counter() - started)


def local_resources() -> dict:
    """The resources on the local services, set up as for the demo."""
    from imgpipeline.cli.demo import prepare_local

    print("set-up: weights, samples, local Kafka and S3 endpoint")
    _, resources, _ = prepare_local(log=lambda line: None)
    return resources


class Hook:
    """A local webhook: every POST kept with its body, headers and the status it answered, `answer(hook)`
    (200 unless told)."""

    def __init__(self, answer=lambda hook: 200):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = answer(hook)
                hook.requests.append({"body": body, "headers": dict(self.headers), "status": status})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def delivered(self) -> list[int]:
        """The numbers of the alerts it took (answered 200), in order."""
        return sorted(r["body"]["number"] for r in self.requests if r["status"] == 200)

    def close(self) -> None:
        self.server.shutdown()
