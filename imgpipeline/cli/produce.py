"""`imgpipeline produce images|video`: frames from a folder, a watched folder, a video or a stream.

Needs Kafka and storage only: it never loads the code location, so a producer starts fast on a
camera gateway.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from imgpipeline import ConfigError


def frames_of(args, ledger):
    """The frames the arguments name, and how many there will be (None when unknown). A video file's
    frames start at --start-time, else where its last run of the source started (the ledger's)."""
    from datetime import datetime

    from tqdm import tqdm

    from imgpipeline.ingest.sources import (
        image_files,
        image_frames,
        is_live,
        parse_size,
        video_frame_count,
        video_frames,
        watch_frames,
    )

    max_size = parse_size(args.max_size)
    if args.kind == "images":
        folder = Path(args.path)
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a folder of images")
        if args.watch:
            print(f"watching {folder} for new images (Ctrl-C to stop)")
            return watch_frames(folder, max_size=max_size), None
        return (image_frames(folder, args.source, sequential=args.sequential, max_size=max_size),
                len(image_files(folder)))
    path = video_location(args.path)
    start = datetime.fromisoformat(args.start_time) if args.start_time else None
    if not is_live(path) and Path(path).is_file():
        start = ledger.start_of(path, start)
    try:
        # A live stream's drops and reconnects are said above the progress bar.
        frames = video_frames(path, args.source, fps=args.fps, max_frames=args.max_frames,
                              start=start, max_size=max_size,
                              log=lambda line: tqdm.write(line, file=sys.stderr))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return frames, video_frame_count(path, args.fps, args.max_frames)


def video_location(given: str) -> str:
    """The video's path or URL; `env:NAME` reads it from the variable NAME (the shell, `.env` or
    `services.env`), so a camera URL with a login never sits on a command line, where `ps` and the
    shell's history would show it."""
    if not given.startswith(ENV_PREFIX):
        return given
    from imgpipeline.environment import environment

    name = given.removeprefix(ENV_PREFIX)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
        raise ConfigError(f"{given!r}: after {ENV_PREFIX} comes the name of an environment variable, e.g. "
                          f"{ENV_PREFIX}CAM1_URL")
    value = environment().get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set: export {name}='rtsp://user:password@camera/stream' (or put it "
                          f"in .env) before `imgpipeline produce video {ENV_PREFIX}{name}`")
    return value


ENV_PREFIX = "env:"


def produce(args) -> int:
    """Send the frames; a live stream is reopened after drops until --max-frames or Ctrl-C. Exit code 1 when
    any frame failed (each is printed with its reason; the next run sends it again)."""
    from imgpipeline.ingest.producer import FrameProducer
    from imgpipeline.ingest.sources import StreamLost
    from imgpipeline.resources import KafkaResource, StorageResource

    kafka = KafkaResource.from_env()
    producer = FrameProducer(kafka, StorageResource.from_env(), args.source, inline=args.inline)
    frames, total = frames_of(args, producer.ledger)
    lost = None
    try:
        summary = producer.send_all(frames, total=total)
    except KeyboardInterrupt:
        summary = producer.summary
    except StreamLost as exc:
        summary, lost = producer.summary, exc
    for failure in summary.failures:
        print(f"  failed: {failure}", file=sys.stderr)
    print(f"{args.source} → {kafka.frames_topic}: {summary.line()}")
    if lost:
        print(f"imgpipeline: {lost}", file=sys.stderr)
        return 1
    return 1 if summary.failed else 0
