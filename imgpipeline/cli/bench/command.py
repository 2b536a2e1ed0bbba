"""`imgpipeline bench WHAT`: each benchmark from its own module."""

from __future__ import annotations

from imgpipeline import ConfigError


def bench(args) -> int:
    import sys

    from imgpipeline.resources import DetectorResource
    from imgpipeline.vision import engines

    try:
        detector = DetectorResource.from_env()
    except ConfigError:
        detector = None  # said by the benchmarks that detect
    if detector is not None and (notice := engines.get(detector.engine).figures_notice):
        print(f"bench: {detector.env_setting('engine')}: {notice}", file=sys.stderr)  # stdout may be JSON
    if args.what == "sensor":
        from imgpipeline.cli.bench.sensor import bench_sensor

        bench_sensor(args.messages)
    elif args.what == "summary":
        from imgpipeline.cli.bench.summary import bench_summary

        bench_summary(args.rows)
    elif args.what == "pipeline":
        from imgpipeline.cli.bench.pipeline import bench_pipeline

        bench_pipeline(args.frames, args.rate, repeat=args.repeat, engines=args.engines, lane=args.lane)
    elif args.what == "memory":
        from imgpipeline.cli.bench.memory import bench_memory

        bench_memory(tuple(args.frames))
    elif args.what == "tracking":
        from imgpipeline.cli.bench.tracking import bench_tracking, bench_truth

        if args.truth is not None:
            bench_truth(args.truth, args.fps, args.every, args.seeds, as_json=args.json)
        else:
            bench_tracking(args.rounds)
    elif args.what == "viewer":
        from imgpipeline.cli.bench.viewer import bench_viewer

        bench_viewer(args.frames)
    elif args.what == "overload":
        from imgpipeline.cli.bench.overload import bench_overload

        bench_overload(tuple(args.factors), args.seconds, args.shed_after)
    elif args.what == "latency":
        from imgpipeline.cli.bench.latency import bench_latency

        bench_latency(args.seconds, args.rate, args.backlog, args.settle, lane=args.lane, rounds=args.rounds,
                      cameras=args.cameras)
    elif args.what == "scale":
        from imgpipeline.cli.bench.scale import bench_scale

        bench_scale(args.sources, args.partitions, args.fps, args.seconds, args.max_batch, lane=args.lane)
    elif args.what == "soak":
        from imgpipeline.cli.bench.soak import bench_soak

        bench_soak(args.days, args.fps, args.partitions, args.sources, args.hour_frames, args.hour_runs,
                   args.live_frames, args.repeat, args.hour_base)
    elif args.what == "chaos":
        from imgpipeline.cli.bench.chaos import bench_chaos

        bench_chaos(args.minutes, args.every, args.seed, args.settle)
    elif args.what == "mqtt":
        from imgpipeline.cli.bench.mqtt import bench_mqtt
        from imgpipeline.ingest.sources import parse_size

        try:
            size = parse_size(args.size)
        except ValueError:
            raise ConfigError(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
        bench_mqtt(args.messages, size)
    elif args.what == "detector":
        from imgpipeline.cli.bench.detect import VARIANTS, bench_detector

        bench_detector(args.frames, tuple(args.variants or VARIANTS), args.size, args.rounds)
    else:
        from imgpipeline.cli.bench.detect import bench_detect

        bench_detect(args.frames)
    return 0
