"""`imgpipeline produce images|video`: frames from a folder, a watched folder, a video or a stream.

Needs Kafka and storage only: it never loads the code location, so a producer starts fast on a
camera gateway.
"""

from __future__ import annotations

import sys
from pathlib import Path

from imgpipeline import ConfigError


def frames_of(args):
    """The frames the arguments name, and how many there will be (None when unknown)."""
    from datetime import datetime

    from tqdm import tqdm

    from imgpipeline.ingest.sources import (
        image_files,
        image_frames,
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
    start = datetime.fromisoformat(args.start_time) if args.start_time else None
    try:
        # A live stream's drops and reconnects are said above the progress bar.
        frames = video_frames(args.path, args.source, fps=args.fps, max_frames=args.max_frames,
                              start=start, max_size=max_size,
                              log=lambda line: tqdm.write(line, file=sys.stderr))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return frames, video_frame_count(args.path, args.fps, args.max_frames)


def produce(args) -> int:
    """Send the frames; a live stream is reopened after drops until --max-frames or Ctrl-C. Exit code 1 when
    any frame failed (each is printed with its reason; the next run sends it again)."""
    from imgpipeline.ingest.producer import FrameProducer
    from imgpipeline.ingest.sources import StreamLost
    from imgpipeline.resources import KafkaResource, StorageResource

    kafka = KafkaResource.from_env()
    producer = FrameProducer(kafka, StorageResource.from_env(), args.source, inline=args.inline)
    frames, total = frames_of(args)
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
