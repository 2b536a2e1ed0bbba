"""`imgpipeline bench pipeline`: the whole pipeline through a real daemon against the bare
detector and a plain consumer loop, on the same frames."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from pathlib import Path

from imgpipeline.cli.bench.common import (
    bare_fps,
    bench_frames,
    fresh_topic_and_store,
    local_resources,
    scratch_dir,
    send_frames,
    write_result,
)
from imgpipeline.lib.stats import percentile


@contextlib.contextmanager
def daemon(kafka, storage, detector=None, env: dict | None = None, log=print):
    """A real Dagster daemon (sensors, runs, its code server; no UI) on the given topic and store, with an
    instance of its own (SQLite in a scratch folder, never the project's PostgreSQL): the LocalServices
    it runs under. `env` adds settings for it."""
    from imgpipeline.lib.instance import InstanceSettings
    from imgpipeline.paths import HOME_ENV
    from imgpipeline.resources.settings import env_name
    from imgpipeline.services import LocalServices

    home = scratch_dir("home")
    chosen = ((detector, "engine"), (detector, "precision")) if detector else ()
    overrides = {HOME_ENV: str(home), env_name(InstanceSettings, "kind"): "sqlite",
                 **{env_name(type(r), f): getattr(r, f) for r, f in (
                     (kafka, "bootstrap_servers"), (kafka, "frames_topic"), (kafka, "alerts_topic"),
                     (storage, "uri"), *chosen)}, **(env or {})}
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    local = LocalServices(home / ".imgpipeline")
    try:
        log("  starting the Dagster daemon (sensors, runs) …")
        local.up_daemon()
        yield local
    finally:
        local.dagster.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class LandingWatch:
    """When each frame's landing record appeared in the store (polled every quarter second)."""

    def __init__(self, storage):
        self.store, self.seen_files, self.landed_at = storage.open(), set(), {}

    def wait_for(self, count: int, deadline: float, poll_s: float = 0.25, closing: int | None = None) -> bool:
        """Until `count` frames landed or the monotonic deadline passed: whether they did.

        With `closing`, it looks once a second until no more than that many frames are left, then every
        poll_s: the watch's own CPU (listing the landing) stays off the pipeline it times, and the last
        frame's time is as sharp."""
        from imgpipeline.defs.records.reader import landing_keys, read_records

        while len(self.landed_at) < count and time.monotonic() < deadline:
            if closing is not None and count - len(self.landed_at) > closing:
                time.sleep(1.0)
            for key in landing_keys(self.store):
                if key not in self.seen_files:
                    self.seen_files.add(key)
                    now = time.time()
                    for record in read_records(self.store, key):
                        self.landed_at.setdefault(record.frame_id, now)
            time.sleep(poll_s)
        return len(self.landed_at) >= count


def warm_up(producer, watch: LandingWatch, frame, deadline: float) -> None:
    """One frame through the whole path, so the daemon, the sensor and the code server are running when
    the measured frames arrive, as in steady operation."""
    send_frames(producer, [type(frame)(frame.frame_id + "-warm-up", frame.data, frame.captured,
                                       frame.width, frame.height)], None, {})
    watch.wait_for(1, deadline)
    watch.landed_at.clear()


def run_pipeline(frames, kafka, storage, rate, timeout_s: float, log=print, detector=None,
                 flush_every: int = 1, lane: str = "batch") -> dict:
    """Produce → Kafka → frames_sensor → runs launched by a real daemon → landing. The batch lane:
    detect_frames runs, whose launch, start and memory are among what it measures; the fast lane: the
    follow_frames runs the sensor keeps going (started by the warm-up frame), a range at a time."""
    import threading

    from imgpipeline.defs.streaming.batch_policy import BatchPolicy
    from imgpipeline.ingest.producer import FrameProducer, Ledger
    from imgpipeline.resources.settings import env_name

    fast_lane = {env_name(BatchPolicy, "fast_lane"): str(int(lane == "fast"))}
    with daemon(kafka, storage, detector, env=fast_lane, log=log) as local:
        producer = FrameProducer(kafka, storage, "bench", ledger=Ledger(local.state.parent / "ledger"),
                                 flush_every=100)
        watch = LandingWatch(storage)
        deadline = time.monotonic() + timeout_s
        warm_up(producer, watch, frames[0], deadline)
        sent_at: dict[str, float] = {}
        sender = threading.Thread(target=send_frames, args=(producer, frames, rate, sent_at, flush_every))
        sender.start()
        watch.wait_for(len(frames), deadline)
        sender.join()
        producer.producer.close()
        runs = run_timings(local.dagster.dagster_home, since=min(sent_at.values()), lane=lane)
    if len(watch.landed_at) < len(frames):
        raise SystemExit(f"only {len(watch.landed_at)} of {len(frames)} frames landed within "
                         f"{timeout_s:.0f} s; see {local.dagster.logfile}")
    return {"sent_at": sent_at, "done_at": watch.landed_at, "runs": runs,
            "dagster_home": local.dagster.dagster_home}


def run_timings(dagster_home: Path, since: float, lane: str = "batch") -> dict:
    """Where the pipeline's fixed costs went, from the runs its daemon recorded after `since` (the fast
    lane's: those that were in flight then, the warm-up's included)."""
    import dagster as dg

    from imgpipeline.lib.instance import open_instance
    from imgpipeline.lib.launcher import PID_TAG

    with open_instance(dagster_home) as instance:
        job = "follow_frames" if lane == "fast" else "detect_frames"
        records = [r for r in instance.get_run_records(dg.RunsFilter(job_name=job))
                   if lane == "fast" or r.create_timestamp.timestamp() >= since]
    created = [r.create_timestamp.timestamp() for r in records]
    startups = [r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time]
    return {
        "runs": len(records),
        # first frame sent → its run created: the sensor's tick and wait
        "first_launch_s": round(min(created) - since, 2) if created and lane == "batch" else None,
        # run created → run started: the queue, the run process and the code location loading
        "run_startup_s": round(sum(startups) / len(startups), 2) if startups else None,
        # runs forked from the launcher's warm server (the others started a new interpreter)
        "runs_forked": sum(PID_TAG in r.dagster_run.tags for r in records),
    }


def run_plain_consumer(frames, kafka, storage, rate, detector) -> dict:
    """The older pipelines' way: one consumer loop; per message fetch, detect, write one JSON file."""
    import threading

    from kafka import TopicPartition

    from imgpipeline.ingest.messages import parse_message
    from imgpipeline.ingest.producer import FrameProducer, Ledger
    from imgpipeline.vision.quality import decode_image

    store = storage.open()
    folder = scratch_dir("plain")
    producer = FrameProducer(kafka, storage, "bench", ledger=Ledger(folder / "ledger"), flush_every=100)
    sent_at: dict[str, float] = {}
    done_at: dict[str, float] = {}
    sender = threading.Thread(target=send_frames, args=(producer, frames, rate, sent_at))
    sender.start()
    consumer = kafka.consumer(group_id=None)
    tps = [TopicPartition(kafka.frames_topic, p) for p in consumer.partitions_for_topic(kafka.frames_topic)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    while len(done_at) < len(frames):
        for records in consumer.poll(timeout_ms=1000, max_records=1).values():
            for record in records:
                message, _ = parse_message(record.value, record.headers)
                image = decode_image(store.get(store.key_for(message.uri)))
                found = detector.detect(image)
                store.put(f"plain/{message.frame_id}.json", json.dumps(
                    {"frame_id": message.frame_id, "detections": [d.as_record() for d in found]}).encode())
                done_at[message.frame_id] = time.time()
    consumer.close()
    sender.join()
    producer.producer.close()
    return {"sent_at": sent_at, "done_at": done_at}


def _rates(timing: dict) -> tuple[float, list[float]]:
    sent, done = timing["sent_at"], timing["done_at"]
    latencies = [done[k] - sent[k] for k in done if k in sent]
    return len(done) / (max(done.values()) - min(sent.values())), latencies


def engine_detectors(engines: list[str] | None = None) -> dict:
    """The detector settings each engine is benchmarked with: the configured engine first (with the
    configured precision), then `opencv`, the reference, unless `engines` says otherwise."""
    from imgpipeline.resources import DetectorResource

    configured = DetectorResource.from_env()
    engines = list(dict.fromkeys(engines or [configured.engine, "opencv"]))
    return {e: DetectorResource.from_env(
        engine=e, precision=configured.precision if e == configured.engine else "default") for e in engines}


def bench_pipeline(frames: int = 1000, rate: float | None = None, timeout_s: float = 1800.0,
                   resources: dict | None = None, repeat: int = 1, engines: list[str] | None = None,
                   lane: str = "batch") -> dict:
    """Bare detector, the whole pipeline through a real daemon on each engine, and a plain consumer,
    on the same frames.

    The first engine is the pipeline's (the configured one by default); every other engine runs
    the same pipeline leg in the same round, for a paired comparison. With `repeat` > 1 the legs
    race again, in alternating order, with bare loops between rounds; the figures are medians over
    rounds and each round is kept. Without resources, the local services are set up as for the demo.
    """
    if repeat < 1:
        raise SystemExit(f"--repeat {repeat}: use 1 or more rounds")
    settings = engine_detectors(engines)
    primary = next(iter(settings))
    resources = resources or local_resources()
    batch = bench_frames(frames)
    # The bare loops and the plain consumer are single processes: one detector on all cores.
    detectors = {e: d.model_copy(update={"threads": 0}).load() for e, d in settings.items()}
    mode = f"at {rate:g} frames/s" if rate else "as a backlog"

    def bare_round() -> dict[str, float]:
        print(f"bare: decode + detect over {frames} frames on {', '.join(detectors)} …")
        return {e: bare_fps(batch, d) for e, d in detectors.items()}

    bares = [bare_round()]
    rounds, latencies = [], {e: [] for e in settings}

    def pipeline_leg(engine: str, round_: dict) -> None:
        runs = "follow_frames" if lane == "fast" else "detect_frames"
        print(f"pipeline on {engine}: {frames} frames {mode} → Kafka → frames_sensor → {runs} (daemon) …")
        kafka, storage, _ = fresh_topic_and_store(resources["kafka"], "pipeline")
        timing = run_pipeline(batch, kafka, storage, rate, timeout_s, detector=settings[engine], lane=lane)
        fps, lat = _rates(timing)
        latencies[engine].append(lat)
        round_["engines"][engine] = {"pipeline_fps": fps, **timing["runs"]}
        if engine == primary:
            round_["pipeline_fps"] = fps
            round_.update(timing["runs"])

    def plain_leg(round_: dict) -> None:
        print(f"plain consumer on {primary}: the same {frames} frames {mode} …")
        kafka, storage, _ = fresh_topic_and_store(resources["kafka"], "plain")
        round_["plain_consumer_fps"], round_["plain_latencies"] = _rates(
            run_plain_consumer(batch, kafka, storage, rate, detectors[primary]))

    legs = [functools.partial(pipeline_leg, e) for e in settings] + [plain_leg]
    for index in range(repeat):
        if repeat > 1:
            print(f"round {index + 1} of {repeat}")
        round_: dict = {"engines": {}}
        # This machine's speed drifts over minutes: the legs run in reverse order every other
        # round, and each round is compared with the bare loops run just before and just after it.
        for leg in legs if index % 2 == 0 else legs[::-1]:
            leg(round_)
        bares.append(bare_round())
        for engine, figures in round_["engines"].items():
            figures["bare_fps"] = (bares[-2][engine] + bares[-1][engine]) / 2
            figures["efficiency"] = figures["pipeline_fps"] / figures["bare_fps"]
        round_["bare_fps"] = round_["engines"][primary]["bare_fps"]
        round_["efficiency"] = round_["engines"][primary]["efficiency"]
        rounds.append(round_)

    precisions = {e: d.identity.precision for e, d in detectors.items()}
    result = {"lane": lane, **combine_rounds(rounds, latencies, bares, frames, rate, precisions)}
    print_pipeline(result, repeat)
    write_result("pipeline", result)
    return result


def combine_rounds(rounds: list[dict], latencies: dict[str, list[list[float]]], bares: list[dict],
                   frames: int, rate: float | None, precisions: dict[str, str]) -> dict:
    """The benchmark's figures: medians over rounds, latency percentiles, each round kept."""
    from statistics import median

    primary = next(iter(precisions))

    def mid(key: str) -> float:
        return median(r[key] for r in rounds)

    def flat(engine: str) -> list[float]:
        return [x for lat in latencies[engine] for x in lat]

    engines = {}
    for engine, precision in precisions.items():
        each = [r["engines"][engine] for r in rounds]
        engines[engine] = {
            "precision": precision,
            "pipeline_fps": round(median(e["pipeline_fps"] for e in each), 2),
            "bare_fps": round(median(e["bare_fps"] for e in each), 2),
            "efficiency": round(median(e["efficiency"] for e in each), 3),
            "latency_p50_s": round(percentile(flat(engine), 0.5), 2),
            "latency_p95_s": round(percentile(flat(engine), 0.95), 2),
            # Paired within each round: the primary engine's pipeline ÷ this one's.
            "primary_speedup": round(median(r["engines"][primary]["pipeline_fps"]
                                            / r["engines"][engine]["pipeline_fps"] for r in rounds), 3),
        }
    plain_lat = [x for r in rounds for x in r.pop("plain_latencies")]
    return {
        "frames": frames, "rate": rate, "engine": primary,
        "bare_fps": round(mid("bare_fps"), 2), "pipeline_fps": round(mid("pipeline_fps"), 2),
        "plain_consumer_fps": round(mid("plain_consumer_fps"), 2), "efficiency": round(mid("efficiency"), 3),
        "latency_p50_s": engines[primary]["latency_p50_s"],
        "latency_p95_s": engines[primary]["latency_p95_s"],
        "plain_latency_p50_s": round(percentile(plain_lat, 0.5), 2),
        "plain_latency_p95_s": round(percentile(plain_lat, 0.95), 2),
        "bare_fps_each": [round(b[primary], 2) for b in bares],
        "engines": engines,
        "runs": rounds[0]["runs"], "first_launch_s": rounds[0]["first_launch_s"],
        "run_startup_s": rounds[0]["run_startup_s"], "runs_forked": rounds[0]["runs_forked"],
        "rounds": [_rounded(r) for r in rounds],
        "pipeline_wins": sum(r["pipeline_fps"] > r["plain_consumer_fps"] for r in rounds),
        # Paired within each round, so the machine's drift between rounds cancels out.
        "pipeline_vs_plain": round(median(r["pipeline_fps"] / r["plain_consumer_fps"] for r in rounds), 3),
    }


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 3) if isinstance(value, float) else value


def print_pipeline(result: dict, repeat: int) -> None:
    print(f"\non {result['engine']}:")
    print(f"{'':<16}{'frames/s':>10}{'p50 s':>9}{'p95 s':>9}")
    print(f"{'bare detector':<16}{result['bare_fps']:>10.2f}{'':>9}{'':>9}"
          f"  (each: {', '.join(f'{b:.2f}' for b in result['bare_fps_each'])})")
    print(f"{'pipeline':<16}{result['pipeline_fps']:>10.2f}{result['latency_p50_s']:>9.2f}"
          f"{result['latency_p95_s']:>9.2f}")
    print(f"{'plain consumer':<16}{result['plain_consumer_fps']:>10.2f}{result['plain_latency_p50_s']:>9.2f}"
          f"{result['plain_latency_p95_s']:>9.2f}")
    print(f"efficiency (pipeline ÷ bare): {result['efficiency']:.3f}")
    if repeat > 1:
        print(f"figures are medians of {repeat} rounds; the pipeline was faster than the plain consumer "
              f"in {result['pipeline_wins']} of {repeat}, by {result['pipeline_vs_plain'] - 1:+.1%} "
              "(median of each round's pipeline ÷ plain consumer)")
        for number, r in enumerate(result["rounds"], 1):
            print(f"  round {number}: pipeline {r['pipeline_fps']:.2f}, plain {r['plain_consumer_fps']:.2f}, "
                  f"bare {r['bare_fps']:.2f} frames/s, efficiency {r['efficiency']:.3f}")
    primary = result["engine"]
    if len(result["engines"]) > 1:
        print(f"\n{'engine':<14}{'precision':>10}{'pipeline':>10}{'bare':>8}{'efficiency':>11}{'p50 s':>7}"
              f"{'p95 s':>7}{primary + ' ×':>14}")
        for engine, e in result["engines"].items():
            print(f"{engine:<14}{e['precision']:>10}{e['pipeline_fps']:>10.2f}{e['bare_fps']:>8.2f}"
                  f"{e['efficiency']:>11.3f}{e['latency_p50_s']:>7.2f}{e['latency_p95_s']:>7.2f}"
                  f"{e['primary_speedup']:>14.2f}")
        print(f"(frames/s; the last column is the {primary} pipeline's frames/s ÷ this engine's, "
              "median of the rounds' paired ratios)")
    if result.get("lane") == "fast":
        print(f"pipeline on {primary}: the fast lane, {result['runs']} follow_frames run(s) (started by "
              f"the warm-up frame, {result['run_startup_s']} s from created to started)")
        return
    print(f"pipeline on {primary}: {result['runs']} runs ({result['runs_forked']} forked from the warm "
          "server); "
          f"first run created {result['first_launch_s']} s after the first frame was sent; "
          f"runs took {result['run_startup_s']} s on average to start")
