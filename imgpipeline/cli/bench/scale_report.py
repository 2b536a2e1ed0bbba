"""`imgpipeline bench scale`, its report: each load of the figures (scale_figures.py) against its limit,
ordered by when it bends, and the printed report."""

from __future__ import annotations

from imgpipeline.cli.bench.scale_figures import NOTICE

# Past this share of a run spent starting, the runs cost more in start-up than in work.
START_SHARE_LIMIT = 0.5
LANDED_P95_LIMIT_S = 1.0  # the fast lane keeps up when a frame lands within a second (p95)


def bends(r: dict) -> list[dict]:
    """Each measured load against its limit (ratio = load ÷ limit), and when it bends: at once (0 s)
    when it is over its limit already, after `bends_after_s` into each hour for a load that grows as
    the hour fills, or not within an hour (None). Ordered by when, then by ratio: the first is where
    the orchestration bends first."""
    from imgpipeline.defs.streaming.batch_policy import BatchPolicy
    from imgpipeline.defs.streaming.detect_frames import Screening
    from imgpipeline.resources.settings import env_name

    batch_env, wait_env = env_name(BatchPolicy, "max_batch"), env_name(BatchPolicy, "max_wait_s")
    interval_env = env_name(BatchPolicy, "interval_s")
    larger = f"larger batches, so fewer runs ({batch_env}, {wait_env})"
    slots, cpu = r["run_slots"], r["cpu_busy_input"]
    found = []

    def add(what: str, ratio: float, measured: str, limit: str, setting: str,
            after_s: float | None = None) -> None:
        """`after_s`: when a load growing through the hour reaches its limit (None: a steady load)."""
        if after_s is None:
            after_s = 0.0 if ratio >= 1 else None
        found.append({"what": what, "ratio": round(ratio, 3), "bends_after_s": after_s and round(after_s),
                      "measured": measured, "limit": limit, "setting": setting})

    if r["tick_p95_s"] is not None:
        add("sensor tick", r["tick_p95_s"] / r["sensor_interval_s"],
            f"p95 {r['tick_p95_s']:.2f} s, max {r['tick_max_s']:.2f} s (an idle tick's watch for new frames, "
            f"up to {r['policy']['watch_s']:g} s, included)",
            f"the tick interval, {r['sensor_interval_s']} s",
            f"{interval_env} (ticks further apart) or fewer partitions: a tick reads every partition's "
            "offsets and submits every run it requests")
    if r["run_launch_start_fraction_mean"] is not None:
        add("run start-up", r["run_launch_start_fraction_mean"] / START_SHARE_LIMIT,
            f"{r['run_launch_start_fraction_mean']:.0%} of a run from its launch is spent starting "
            f"({r['run_starting_s_mean']} s of {r['run_starting_s_mean'] + r['run_op_s_mean']:.2f} s), "
            f"{r['frames_per_run'] or 0:,.0f} frames per run",
            f"{START_SHARE_LIMIT:.0%} of each run", larger)
    achieved, growth = r["input_fps"], r["lag_growth_fps"]
    if achieved and r["lag_growing"]:
        processed = max(achieved - growth, 0.01 * achieved)
        keep_up = achieved / processed
        measured = (f"lag grew {growth:,.0f} frames/s while input lasted: {processed:,.0f} of "
                    f"{achieved:,.0f} frames/s processed")
    else:
        keep_up = r["run_slot_occupancy"]
        trend = ("input too short for the lag's trend" if growth is None else
                 f"lag steady (trend {growth:+,.1f} frames/s, within a tick's ups and downs)")
        measured = f"runs running {r['run_slot_occupancy']:.0%} of the slots' time, {trend}"
    measured += (f"; {r['runs_in_flight_mean']:.1f} runs in flight on average for {slots} slots, "
                 f"{r['runs_running_mean']:.2f} running; CPU {_pct(cpu)} busy")
    if cpu is not None and cpu >= 0.9:
        moves = ("the machine's CPU, which is saturated: more cores or machines; fewer processes and "
                 f"files per frame with {larger}")
    elif r["runs_in_flight_mean"] > slots and r["run_slot_occupancy"] < 0.8:
        moves = (f"runs wait in the queue while its {slots} slots stand idle "
                 f"{1 - r['run_slot_occupancy']:.0%} of the time: the queue fills a slot a run has freed "
                 f"on its next pass (dequeue_interval_seconds in dagster.yaml), so every launch should "
                 f"carry more frames: {batch_env} (now {r['policy']['max_batch']}); and, with CPU "
                 f"{_pct(cpu)} busy, more slots: max_concurrent_runs in dagster.yaml")
    elif r["run_slot_occupancy"] >= 0.8:
        moves = f"more runs at once: max_concurrent_runs in dagster.yaml (CPU {_pct(cpu)} busy); {larger}"
    elif r["runs_in_flight_mean"] >= 0.8 * r["in_flight_cap"]:
        moves = f"more runs in flight: {r['in_flight_env']}, more partitions"
    else:
        moves = f"{larger}; ticks closer together ({interval_env})"
    if r.get("lane") == "fast":  # no runs per batch: the followers keep up, or the lag grows
        trend = ("input too short for the lag's trend" if growth is None else
                 f"lag trend {growth:+,.1f} frames/s while input lasted")
        keep_up = keep_up if achieved and r["lag_growing"] else (cpu or 0.0)
        measured = f"{r['followers']} follow_frames run(s), {trend}; CPU {_pct(cpu)} busy"
        moves = (f"more followers ({env_name(BatchPolicy, 'followers')}) and partitions, more cores or "
                 "machines")
    add("keeping up (lag)", keep_up, measured, "lag not growing" if r.get("lane") == "fast"
        else f"{slots} run slots, lag not growing", moves)

    # Duplicate screening: a run reads the frame ids its partition landed in its hour within the
    # window before its range, so its cost grows through the hour's first window of offsets and then
    # stays; summed over the runs, a load on the run slots.
    runs_s = r["per_hour"]["runs"] / 3600
    per_frame = r["screening"]["s_per_record"]
    window = r["screening"].get("window", 0)
    partition_hour = achieved * 3600 / r["partitions"]
    read = min(window, partition_hour) if window else achieved * 3600  # records a run reads at most
    load_hour = runs_s * per_frame * read / slots
    add("duplicate screening", load_hour,
        f"each run reads the frame ids landed in its hour by its partition's ranges of the last "
        f"{window:,} offsets: {per_frame * 1e6:.1f} µs a record, {per_frame * read:,.2f} s a run at most, "
        f"{r['per_hour']['runs']:,.0f} runs an hour" if window else
        f"each run reads every frame id landed in its hour: {per_frame * 1e6:.1f} µs a record, "
        f"{per_frame * read:,.1f} s a run at the end of an hour of {achieved * 3600:,.0f} frames",
        f"the {slots} run slots' time",
        f"{larger}; a smaller {env_name(Screening, 'window')} (offsets screened)",
        after_s=3600 / load_hour if load_hour >= 1 else None)

    # Warehouse: the automation builds the current hour after landing updates, one build at a time, each
    # adding the files landed since the last one: at most one slot, busy B / (B + interval).
    wh = r["warehouse"]
    interval = r["warehouse_automation_interval_s"] or 30
    ext = wh.get("extension")
    if wh.get("hour_end_extension_s") is not None:
        build_s = wh["hour_end_extension_s"]
        what = (f"the current hour is extended by what landed since its last build: {ext['extend_s']:.1f} s "
                f"for {ext['files']} files ({ext['new_frames']:,} frames) over {ext['stored_frames']:,} "
                f"stored; {build_s:,.1f} s at the end of an hour at this rate (reading and writing the "
                f"hour's Parquet: {ext['merge_s_per_frame'] * 1e6:.2f} µs a stored frame), every "
                f"{interval} s at most; made whole once: {wh['hour_build_s']:,.1f} s")
    else:
        build_s = wh["hour_build_s"]
        what = (f"an hour's frames and detections build whole in {build_s:,.1f} s of 3,600 at this rate "
                f"({wh['empty_hourly_s']:.1f} s fixed + {wh['hourly_s_per_frame'] * 1e6:.1f} µs a frame), "
                f"rebuilt after landing updates (every {interval} s at most; no extension was measured)")
    add("current hour builds", build_s / (build_s + interval) / slots, what,
        f"the {slots} run slots' time (one build at a time: at most 1 of {slots})",
        f"the automation's interval; fewer landing files an hour: {larger}",
        after_s=0.0 if build_s >= 3600 else None)
    if r.get("lane") == "fast" and r.get("input_wait_p95_s") is not None:
        add("landed latency", r["input_wait_p95_s"] / LANDED_P95_LIMIT_S,
            f"send → detected p95 {r['input_wait_p95_s']:.2f} s while the input lasted",
            f"{LANDED_P95_LIMIT_S:g} s", f"more followers ({env_name(BatchPolicy, 'followers')}) and "
            "partitions, more cores or machines")
    if cpu is not None:
        add("machine CPU", cpu / 0.95, f"{cpu:.0%} busy while input lasted (the benchmark's producer and "
            "broker included)", f"95 % of {r['cores']} cores", "more cores or machines")
    return sorted(found, key=lambda b: (b["bends_after_s"] is None, b["bends_after_s"] or 0, -b["ratio"]))


def _n(value, unit: str = "") -> str:
    """A figure for the table: — when unknown, two decimals below 100, thousands separated above."""
    if value is None:
        return "—"
    if isinstance(value, float) and value < 100:
        return f"{value:,.2f}{unit}"
    return f"{value:,.0f}{unit}"


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{share:.0%}"


def summary_rows(r: dict) -> list[tuple[str, str]]:
    hour, wh = r["per_hour"], r["warehouse"]
    asked = r["input_fps_asked"]
    short = r["input_fps"] < 0.95 * asked
    rate_note = (f"  ← only {r['input_fps'] / max(1e-9, asked):.0%} of the rate asked: this machine "
                 "could not produce more" if short else "")
    statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(r["statuses"].items()))
    lags = r["partition_lag_at_input_end"].values()
    drain = (f"drained {r['drain_s']} s after input stopped" if r["drained"] else
             f"NOT drained: {r['lag_remaining']:,} frames left when the benchmark stopped waiting")
    if r["drain_fps"]:
        drain += f" (drain rate {r['drain_fps']:,.0f} frames/s"
        drain += ")" if r["drained"] else f": ~{r['lag_remaining'] / r['drain_fps']:,.0f} s more)"
    trend = ("its trend unknown (input too short)" if r["lag_growth_fps"] is None else
             f"grew {r['lag_growth_fps']:,.1f} frames/s while input lasted")
    others = ", ".join(f"{job} {count}" for job, count in sorted(r["other_runs"].items()))
    lane = [("fast lane", f"{r['followers']} follow_frames run(s) sharing the partitions; while the input "
                          f"lasted, send → detected p50 {_n(r['input_wait_p50_s'], ' s')}, p95 "
                          f"{_n(r['input_wait_p95_s'], ' s')} (landing records); broker → landed p95 of each "
                          f"window the runs observed: median {_n(r['landed_p95_window_median_s'], ' s')}, "
                          f"max {_n(r['landed_p95_window_max_s'], ' s')} ({r['landed_windows']} windows)")
            ] if r.get("lane") == "fast" else []
    return lane + [
        ("input", f"{r['frames_sent']:,} frames from {r['sources']:,} sources over {r['partitions']} "
                  f"partitions in {r['input_span_s']:.1f} s: {r['input_fps']:,.1f} frames/s achieved of "
                  f"{asked:,.1f} asked{rate_note}"),
        ("landed", f"{r['records']:,} records, {r['distinct_frames']:,} distinct frames ({statuses}); "
                   f"wait on the topic until landed p50 {_n(r['wait_p50_s'], ' s')}, "
                   f"p95 {_n(r['wait_p95_s'], ' s')}, max {_n(r['wait_max_s'], ' s')}"),
        ("sensor tick", f"p50 {_n(r['tick_p50_s'], ' s')}, p95 {_n(r['tick_p95_s'], ' s')}, "
                        f"max {_n(r['tick_max_s'], ' s')} against a {r['sensor_interval_s']} s interval "
                        f"({r['ticks']} ticks, {r['ticks_failed']} failed; an idle tick watches for new "
                        f"frames up to {r['policy']['watch_s']:g} s by design)"),
        ("runs", f"{r['runs']:,} detect_frames runs ({r['runs_failed']} failed), {_n(hour['runs'])} an hour; "
                 f"{_n(r['frames_per_run'])} frames per run (range p50 {_n(r['frames_per_range_p50'])}, "
                 f"max {_n(r['frames_per_range_max'])}); {r['run_slots']} run slots"),
        ("run start-up", f"from creation to its op's start: {_pct(r['run_start_fraction_p50'])} p50, "
                         f"{_pct(r['run_start_fraction_mean'])} mean of a run; from launch (off the queue): "
                         f"{_pct(r['run_launch_start_fraction_p50'])} p50, "
                         f"{_pct(r['run_launch_start_fraction_mean'])} mean. Queued "
                         f"{_n(r['run_queued_s_mean'], ' s')}, "
                         f"starting {_n(r['run_starting_s_mean'], ' s')}, "
                         f"op {_n(r['run_op_s_mean'], ' s')} (means; whole run {_n(r['run_s_mean'], ' s')})"),
        ("other runs", others or "none"),
        ("landing files", f"{r['landing_files']:,} ({_n(hour['landing_files'])} an hour), "
                          f"{r['landing_bytes'] / 1e6:,.1f} MB "
                          f"({hour['landing_bytes'] / 1e9:,.2f} GB an hour)"),
        ("lag", f"{r['lag_at_input_end']:,} when input stopped (per partition {min(lags, default=0):,}–"
                f"{max(lags, default=0):,}); {trend}; {drain}"),
        ("run slots", f"{r['run_slots']}: on average {r['runs_in_flight_mean']:.2f} runs in flight (queued "
                      f"or running; peak {r['runs_in_flight_peak']}), {r['runs_running_mean']:.2f} running "
                      f"({_pct(r['run_slot_occupancy'])} of the slots); machine CPU "
                      f"{_pct(r['cpu_busy_input'])} busy while input lasted, {_pct(r['cpu_busy_drain'])} "
                      f"while draining ({r['cores']} cores)"),
        ("warehouse", f"{wh['hours']} hour(s) of frames + detections in {_n(wh.get('hourly_s'), ' s')}, "
                      f"daily_summary in {_n(wh.get('daily_s'), ' s')}: "
                      f"{_n(hour['warehouse_build_s'], ' s')} per hour of input (fixed "
                      f"{wh['empty_hourly_s']:.2f} + {wh['empty_daily_s']:.2f} s, timed over no frames; "
                      f"{(wh['hourly_s_per_frame'] + wh['daily_s_per_frame']) * 1e6:.1f} µs a frame); "
                      f"{wh['parquet_files']} Parquet files ({_n(hour['parquet_files'])} an hour)"),
    ]


def _when(bend: dict) -> str:
    after = bend["bends_after_s"]
    if after is None:
        return "holds"
    return "bent already" if after == 0 else f"bends {after / 60:.0f} min into each hour"


EXTRAPOLATED = {"frames": ("frames", 1), "runs": ("runs", 1), "landing_files": ("landing files", 1),
                "landing_bytes": ("landing GB", 1e9), "parquet_files": ("Parquet files", 1),
                "warehouse_build_s": ("warehouse build h", 3600)}


def print_scale(r: dict) -> None:
    print(f"\n{NOTICE}\n")
    for label, text in summary_rows(r):
        print(f"{label:<14} {text}")
    print(f"\n{'extrapolated':<22}{'per hour':>14}{'per day':>16}{'per month (30 d)':>19}")
    for key, (label, unit) in EXTRAPOLATED.items():
        values = [r[period][key] / unit for period in ("per_hour", "per_day", "per_month")]
        decimals = 2 if unit != 1 else 0
        print(f"{label:<22}" + "".join(f"{v:>{w},.{decimals if v >= 100 else 2}f}"
                                       for v, w in zip(values, (14, 16, 19), strict=True)))
    print("(per hour of input at the achieved rate; a day is 24 such hours, a month 30 days)")
    print("\nwhere it bends, earliest first (load ÷ limit at the end of an hour of this input; when):")
    for bend in r["bends"]:
        print(f"  {bend['ratio']:>7.2f}  {bend['what']:<20} {_when(bend)}: {bend['measured']}; "
              f"limit: {bend['limit']}")
    first = r["bends_first"]
    if first:
        print(f"\nFirst to bend: {first['what']} ({_when(first)}, {first['ratio']:.2f} of its limit).\n"
              f"  What moves it: {first['setting']}.")
    print(f"\n{NOTICE}")
