"""`imgpipeline bench scale`, its figures: what the run measured turned into rates per hour, day and
month, per lane."""

from __future__ import annotations

from imgpipeline.environment import cores
from imgpipeline.lib.stats import percentile

NOTICE = ("THE DETECTOR IS A NO-OP (engine `noop`): frames are fetched, checked (sha256) and decoded, "
          "nothing is detected. These figures measure orchestration only, not detection.")
HOURS_PER_DAY, DAYS_PER_MONTH = 24, 30
SAMPLE_S = 2.0  # seconds between lag samples


def slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, value) samples; 0 with fewer than two."""
    if len(samples) < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / len(samples)
    mean_v = sum(v for _, v in samples) / len(samples)
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    return sum((t - mean_t) * (v - mean_v) for t, v in samples) / spread if spread else 0.0


def hour_extension_s(warehouse: dict, achieved: float, frames_hour: float, interval: float) -> float | None:
    """What extending the current hour costs at the end of an hour of this input: the fixed part of a
    build, the frames landed since the last one (an automation interval's), and reading and writing the
    hour's stored tables (per stored frame); None when no extension was measured."""
    ext = warehouse.get("extension")
    if not ext or not ext["extended"]:
        return None
    fixed, merge = warehouse.get("empty_hourly_s", 0.0), ext["merge_s_per_frame"]
    per_new = max(0.0, ext["extend_s"] - fixed - merge * ext["stored_frames"]) / max(1, ext["new_frames"])
    return round(fixed + per_new * achieved * interval + merge * frames_hour, 2)


def figures(sources: int, partitions: int, fps: float, seconds: float, live: dict, landing: dict,
            warehouse: dict, screening: dict) -> dict:
    """The measured figures, per hour of input, per day and month, and what bends first."""
    from imgpipeline.defs.automation import AutomationPolicy

    sent = live["sent"]
    span = max(1e-9, (live["last_sent"] or live["t0"]) - (live["first_sent"] or live["t0"]))
    achieved = sent / span if sent > 1 else 0.0
    per_hour_scale = 3600.0 / span
    ticks = live["tick_durations"]
    policy = live["policy"]
    runs = live["runs"]
    finished = [r for r in runs if r["ended"] and r["step_start"]]
    def starting(run: dict, since: str) -> float:
        """The share of a run, from `since` to its end, that passed before its op started."""
        return (run["step_start"] - run[since]) / max(1e-9, run["ended"] - run[since])

    starts = [starting(r, "created") for r in finished]
    launched = [r for r in finished if r["launched"]]
    launch_starts = [starting(r, "launched") for r in launched]
    run_s = [r["ended"] - r["created"] for r in finished]
    sizes = sorted(ledger["end"] - ledger["start"] for ledger in live["ledgers"])
    window_end = live["drained_at"] or live["t_end"]
    window = max(1e-9, window_end - live["t0"])
    slots = min(live["in_flight_cap"], live["max_concurrent_runs"] or live["in_flight_cap"])
    # Runs in flight on average (queued or running, as the sensor counts them) and running, per slot.
    def until_end(run: dict) -> float:
        return min(run["ended"] or window_end, window_end)

    in_flight = sum(until_end(r) - r["created"] for r in runs) / window
    running = sum(until_end(r) - r["started"] for r in runs if r["started"]) / window
    # The lag's trend while input lasted, past the ramp (the first runs wait for a tick and start up).
    ramp = max(span / 4, 2 * policy["interval_s"] + SAMPLE_S)
    input_samples = [(t, lag) for t, lag in live["lag_samples"] if ramp <= t <= span + SAMPLE_S]
    growth = slope(input_samples) if len(input_samples) >= 3 else None
    # The lag saws up and down by a tick's input: a trend that does not outgrow two ticks' worth over
    # the window is no trend.
    window_s = input_samples[-1][0] - input_samples[0][0] if len(input_samples) >= 3 else 0.0
    growing = growth is not None and growth * window_s > 2 * achieved * policy["interval_s"]
    drain_s = round(live["drained_at"] - live["input_end"], 1) if live["drained_at"] else None
    drained_frames = live["lag_at_input_end"] - live["lag_remaining"]
    drain_elapsed = (live["drained_at"] or live["t_end"]) - live["input_end"]
    frames_hour = achieved * 3600
    records = max(1, landing["records"])
    # A build costs a fixed part (timed over no frames) and a part per frame: an hour of this input is
    # built once (hourly tables), a day once (daily_summary, a 24th of it per hour).
    per_frame_h = max(0.0, warehouse.get("hourly_s", 0.0) - warehouse.get("empty_hourly_s", 0.0)) / records
    per_frame_d = max(0.0, warehouse.get("daily_s", 0.0) - warehouse.get("empty_daily_s", 0.0)) / records
    hourly_build = warehouse.get("empty_hourly_s", 0.0) + per_frame_h * frames_hour
    build_hour = (hourly_build + warehouse.get("empty_daily_s", 0.0) / HOURS_PER_DAY
                  + per_frame_d * frames_hour)
    interval = AutomationPolicy.from_env().interval_s
    extend_end = hour_extension_s(warehouse, achieved, frames_hour, interval)
    per_hour = {
        "frames": round(landing["records"] * per_hour_scale, 1),
        "runs": round(len(runs) * per_hour_scale, 1),
        "landing_files": round(len(landing["files"]) * per_hour_scale, 1),
        "landing_bytes": round(landing["bytes"] * per_hour_scale),
        # Parquet files do not grow with the input: two per hourly partition, one per day.
        "parquet_files": round(warehouse["hourly_files"] / max(1, warehouse["hours"])
                               + warehouse["daily_files"] / max(1, warehouse["days"]) / HOURS_PER_DAY, 3),
        "warehouse_build_s": round(build_hour, 2),
    }
    per_day = {k: round(v * HOURS_PER_DAY, 3) for k, v in per_hour.items()}
    per_month = {k: round(v * HOURS_PER_DAY * DAYS_PER_MONTH, 3) for k, v in per_hour.items()}
    result = {
        "notice": NOTICE, "engine": "noop", "sources": sources, "partitions": partitions, "fps": fps,
        "seconds": seconds, "topic": live["topic"], "policy": policy,
        "in_flight_cap": live["in_flight_cap"], "in_flight_env": live["in_flight_env"],
        "max_concurrent_runs": live["max_concurrent_runs"], "run_slots": slots,
        "frames_sent": sent, "input_fps_asked": round(sources * fps, 1), "input_fps": round(achieved, 1),
        "input_span_s": round(span, 1),
        "records": landing["records"], "distinct_frames": landing["distinct"],
        "statuses": landing["statuses"],
        "wait_p50_s": landing["wait_p50_s"], "wait_p95_s": landing["wait_p95_s"],
        "wait_max_s": landing["wait_max_s"],
        "sensor_interval_s": policy["interval_s"], "ticks": live["ticks"],
        "ticks_failed": live["ticks_failed"],
        "tick_p50_s": round(percentile(ticks, 0.5), 3) if ticks else None,
        "tick_p95_s": round(percentile(ticks, 0.95), 3) if ticks else None,
        "tick_max_s": round(max(ticks), 3) if ticks else None,
        "runs": len(runs), "runs_failed": sum(r["status"] == "FAILURE" for r in runs),
        "warm_up_runs": live["warm_up_runs"], "other_runs": live["other_runs"],
        "ranges": len(sizes), "frames_per_run": round(sum(sizes) / len(runs), 1) if runs else None,
        "frames_per_range_p50": percentile(sizes, 0.5) if sizes else None,
        "frames_per_range_max": sizes[-1] if sizes else None,
        "run_s_mean": round(sum(run_s) / len(run_s), 2) if run_s else None,
        "run_start_fraction_p50": round(percentile(starts, 0.5), 3) if starts else None,
        "run_start_fraction_mean": mean_of(starts, 3),
        # The same from the run's launch (off the queue), the wait for a run slot left out.
        "run_launch_start_fraction_p50": round(percentile(launch_starts, 0.5), 3) if launch_starts else None,
        "run_launch_start_fraction_mean": mean_of(launch_starts, 3),
        "run_queued_s_mean": mean_of([r["launched"] - r["created"] for r in launched]),
        "run_starting_s_mean": mean_of([r["step_start"] - r["launched"] for r in launched]),
        "run_op_s_mean": mean_of([r["ended"] - r["step_start"] for r in finished]),
        "landing_files": len(landing["files"]), "landing_bytes": landing["bytes"],
        "lag_at_input_end": live["lag_at_input_end"],
        "partition_lag_at_input_end": {str(p): lag for p, lag
                                       in sorted(live["partition_lag_at_input_end"].items())},
        "lag_growth_fps": round(growth, 1) if growth is not None else None, "lag_growing": growing,
        "lag_samples": live["lag_samples"],
        "drained": live["drained_at"] is not None, "drain_s": drain_s,
        "lag_remaining": live["lag_remaining"],
        "drain_fps": (round(drained_frames / drain_elapsed, 1)
                      if drain_elapsed > 0 and drained_frames else None),
        "runs_in_flight_mean": round(in_flight, 2), "runs_running_mean": round(running, 2),
        "runs_in_flight_peak": peak_overlap([(r["created"], r["ended"] or window_end) for r in runs]),
        "run_slot_occupancy": round(running / slots, 3),
        "cpu_busy_input": live["cpu_busy_input"], "cpu_busy_drain": live["cpu_busy_drain"],
        "cores": cores(),
        "warehouse": {**warehouse, "hourly_s_per_frame": round(per_frame_h, 9),
                      "daily_s_per_frame": round(per_frame_d, 9), "hour_build_s": round(hourly_build, 2),
                      "hour_end_extension_s": extend_end},
        "screening": {**screening, "s_per_record": round(screening["s_per_record"], 9)},
        "warehouse_automation_interval_s": interval,
        "per_hour": per_hour, "per_day": per_day, "per_month": per_month,
        "dagster_home": str(live["dagster_home"]), "store": live["storage"].uri,
    }
    result.update(lane_figures(live, landing, partitions))
    return result


def lane_figures(live: dict, landing: dict, partitions: int) -> dict:
    """The lane measured and, for the fast lane, its latency while the input lasted: from each frame's
    send to its detection (its landing record), and from the broker to its range accounted for, as the
    follow_frames runs observed it every few seconds (each window's p95)."""
    lane = live.get("lane", "batch")
    figures = {"lane": lane, "input_wait_p50_s": landing.get("input_wait_p50_s"),
               "input_wait_p95_s": landing.get("input_wait_p95_s")}
    if lane == "fast":
        windows = sorted(o["landed_p95_s"] for o in live.get("observed") or [])
        figures.update(followers=min(live["policy"]["followers"], partitions),
                       landed_windows=len(windows),
                       landed_p95_window_median_s=round(percentile(windows, 0.5), 3) if windows else None,
                       landed_p95_window_max_s=windows[-1] if windows else None)
    return figures


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def mean_of(values: list[float], digits: int = 2) -> float | None:
    return round(sum(values) / len(values), digits) if values else None
