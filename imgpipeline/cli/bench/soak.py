"""`imgpipeline bench soak`: a month of a site's history written at the layout real runs write, and the
pipeline's recurring work timed over it at its first day and at its last.

The history (soak_history.py) is written a day at a time into a fresh local folder, Dagster instance
(SQLite) and state folder. At "day 1" it holds yesterday only (a first round of the work, not counted,
warms the process up); then the days before it are written, retention's sweep and the purge of run
records run as their schedules would today, and the same work is timed again at "day N". The work is
the real code's, in this process, on a fresh topic of the local Kafka broker: the frames sensor's tick,
detect_frames runs (the no-op engine) over live frames (in an hour that holds `hour_base` frames before
them, as an hour under way does), the current hour's tables extended by them, the
warehouse's automation evaluated, the coverage check, `imgpipeline status`, a day page of the viewer
(cold: its views made), `imgpipeline query --day`'s start-up, a daily summary, and producers' and the
MQTT bridge's start (their ledgers and journals). Each figure is the median of `repeat` measurements
(the automation's of 9 evaluations after each);
it prints each at both points and their ratio, the store's and the instance's size, and what retention
and the purge removed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from imgpipeline.cli.bench.common import local_resources, scratch_dir, write_result
from imgpipeline.cli.bench.soak_history import History, Shape
from imgpipeline.cli.bench.soak_site import STARTED, Soak

# A cost at the last day more than this many times its first day's grows with history.
LIMIT = 1.2
# What is timed, in the order printed.
COSTS = {
    "sensor_tick_s": "frames_sensor tick",
    "run_s": "detect_frames run",
    "extend_s": "current hour extended",
    "automation_s": "warehouse automation evaluated",
    "coverage_s": "coverage check",
    "status_s": "imgpipeline status",
    "day_page_s": "viewer day page, cold",
    "query_start_s": "imgpipeline query --day start-up",
    "daily_summary_s": "daily summary of a day",
    "producer_start_s": f"{STARTED} producers' ledgers opened",
    "bridge_start_s": f"MQTT journals of {STARTED} cameras read",
}


def bench_soak(days: int = 32, fps: float = 1000.0, partitions: int = 12, sources: int = 1000,
               hour_frames: int = 1200, hour_runs: int = 1000, live_frames: int = 3000, repeat: int = 3,
               hour_base: int = 30_000, *, resources: dict | None = None, folder: Path | None = None,
               warm_up: bool = True) -> dict:
    """Write the history's last day, time the work; write the rest, sweep and purge as today's schedules
    would, time it again."""
    from imgpipeline import ConfigError

    if days < 2 or min(partitions, sources, hour_frames, hour_runs, live_frames, repeat, hour_base) < 1 \
            or fps <= 0:
        raise ConfigError("bench soak: --days must be at least 2, --partitions, --sources, --hour-frames, "
                          "--hour-runs, --live-frames, --repeat and --hour-base at least 1, --fps more "
                          "than 0")
    shape = Shape(days, fps, partitions, sources, hour_frames, hour_runs)
    print(f"history: {shape.sentence()}")
    resources = resources or local_resources()
    folder = Path(folder) if folder else scratch_dir("soak")
    soak = Soak(resources["kafka"], folder, shape, live_frames, repeat, hour_base)
    with soak.environment():
        result = run(soak, shape, warm_up)
    print_soak(result)
    write_result("soak", result)
    return result


def run(soak: Soak, shape: Shape, warm_up: bool) -> dict:
    from imgpipeline.cli.bench.scale_input import delete_topics, synthetic_jpeg
    from imgpipeline.defs.retention.sweep import DataRetention, sweep
    from imgpipeline.defs.streaming.batch_policy import BatchPolicy
    from imgpipeline.defs.streaming.frames_sensor import build_frames_sensor
    from imgpipeline.defs.streaming.upkeep import InstanceRetention, purge_runs
    from imgpipeline.ingest.messages import frame_key, sha256_hex
    from imgpipeline.lib.instance import open_instance
    from imgpipeline.paths import state_dir
    from imgpipeline.services.dagster_dev import dagster_home

    store = soak.storage.open()
    data = synthetic_jpeg()
    key = frame_key("bench-soak", datetime.now(UTC), "frame")
    store.put_new(key, data, sha256=sha256_hex(data))
    soak.image = (store.uri(key), sha256_hex(data), data)
    # Every pending frame asked for at once: the ticks timed are the daemon's, without its waiting.
    # The batch lane's ticks and runs are what it times.
    policy = BatchPolicy.from_env().model_copy(update={"max_wait_s": 0, "watch_s": 0, "fast_lane": False})
    soak.sensor = build_frames_sensor(policy)
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    runs_days = InstanceRetention.from_env().runs_keep_days
    try:
        soak.kafka.ensure_topics(partitions=shape.partitions)
        with open_instance(dagster_home(state_dir())) as instance:
            soak.instance = instance
            soak.history = history = History(store, instance, soak.kafka.frames_topic, shape, state_dir(),
                                             soak.image)
            started = time.perf_counter()
            history.day(yesterday, with_runs=True)
            print(f"  day 1 written in {time.perf_counter() - started:.0f} s")
            if warm_up:
                soak.measure("warm-up (not counted)", yesterday)  # imports, caches, the hour's first build
            first = soak.measure("day 1", yesterday)
            started = time.perf_counter()
            for back in range(2, shape.days + 1):
                day = today - timedelta(days=back)
                history.day(day, with_runs=back <= runs_days + 1)
                print(f"  {day} written ({time.perf_counter() - started:.0f} s so far)", flush=True)
            written = soak.sizes()
            started = time.perf_counter()
            swept = sweep(store, DataRetention.from_env(), today, log=lambda line: None)
            purged_at = time.time()
            purged = purge_runs(instance, InstanceRetention.from_env(), now=purged_at, log=lambda line: None)
            upkeep_s = time.perf_counter() - started
            last = soak.measure(f"day {shape.days}", yesterday)
    finally:
        delete_topics(soak.kafka)
    removed = {kind: sum(sum(c.values()) for c in per_day.values())
               for kind, per_day in swept.get("deleted", {}).items()}
    ratios = {name: round(last["costs"][name] / first["costs"][name], 2) if first["costs"][name] else None
              for name in COSTS}
    over = sorted(name for name, ratio in ratios.items() if ratio and ratio > LIMIT)
    return {"shape": shape.__dict__, "today": today.isoformat(), "first": first, "last": last,
            "written": written, "ratios": ratios, "over_limit": over,
            "retention_removed": removed, "runs_purged": sum(purged.values()), "purged_at": purged_at,
            "upkeep_s": round(upkeep_s, 1)}


def print_soak(result: dict) -> None:
    days = result["shape"]["days"]
    first, last = result["first"], result["last"]
    print(f"\n{'cost (median)':<34} {'day 1':>9} {f'day {days}':>9} {'ratio':>6}")
    for name, label in COSTS.items():
        ratio = result["ratios"][name]
        print(f"{label:<34} {first['costs'][name]:>8.3f}s {last['costs'][name]:>8.3f}s "
              f"{'' if ratio is None else f'{ratio:.2f}':>6}")
    print(f"{'store':<34} {first['store_objects']:>8,} {last['store_objects']:>9,} objects")
    print(f"{'':<34} {first['store_bytes'] / 1e6:>7.0f}MB {last['store_bytes'] / 1e6:>7.0f}MB")
    print(f"{'instance':<34} {first['instance_bytes'] / 1e6:>7.0f}MB {last['instance_bytes'] / 1e6:>7.0f}MB "
          f"({first['detect_runs']:,} and {last['detect_runs']:,} detect_frames runs)")
    written, removed = result["written"], result["retention_removed"]
    print(f"history written: {written['store_objects']:,} objects, {written['store_bytes'] / 1e6:.0f} MB, "
          f"{written['detect_runs']:,} detect_frames runs; retention and the purge ({result['upkeep_s']} s) "
          f"removed {', '.join(f'{n:,} {kind}' for kind, n in removed.items()) or 'no'} objects and "
          f"{result['runs_purged']:,} runs")
    worst = max((r for r in result["ratios"].values() if r is not None), default=None)
    if worst is not None:
        over = ", ".join(COSTS[name] for name in result["over_limit"])
        print(f"largest ratio day {days} ÷ day 1: {worst:.2f}; "
              + (f"over {LIMIT:g}×: {over}" if over else f"every cost within {LIMIT:g}× of day 1"))
