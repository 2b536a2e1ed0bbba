"""`imgpipeline bench …`: figures, printed and written to `.imgpipeline/bench/`; never asserted."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

from imgpipeline.config import Settings, state_dir

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


def bench_sensor(messages: int = 1_000_000) -> dict:
    """Tick time of frames_sensor over a backlog of `messages` on a fresh topic."""
    import dagster as dg

    from imgpipeline.definitions import build_resources
    from imgpipeline.resources import KafkaResource
    from imgpipeline.sensors.frames_sensor import BatchPolicy, build_frames_sensor

    settings = Settings.from_env()
    base = build_resources(settings)["kafka"]
    kafka = KafkaResource(**{**base.model_dump(), "frames_topic": f"bench-{uuid.uuid4().hex[:8]}"})
    kafka.ensure_topics(partitions=1)
    print(f"producing {messages:,} small messages to {kafka.frames_topic} …")
    started = time.perf_counter()
    producer = kafka.producer(acks=1, linger_ms=50, batch_size=1 << 20)
    value = b'{"schema":1}'
    for _ in range(messages):
        producer.send(kafka.frames_topic, value=value)
    producer.flush()
    producer.close()
    print(f"  produced in {time.perf_counter() - started:.1f} s")

    sensor = build_frames_sensor(BatchPolicy())
    ticks = []
    cursor = None
    with dg.instance_for_test() as instance:
        for _ in range(3):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"kafka": kafka})
            started = time.perf_counter()
            result = sensor(context)
            ticks.append(time.perf_counter() - started)
            cursor = getattr(result, "cursor", None) or cursor
    admin = kafka.admin()
    try:
        admin.delete_topics([kafka.frames_topic, kafka.dlq_topic])
    finally:
        admin.close()
    result = {"backlog": messages, "tick_s": [round(t, 3) for t in ticks], "max_tick_s": round(max(ticks), 3)}
    print(f"sensor tick with a backlog of {messages:,}: " + ", ".join(f"{t:.3f} s" for t in ticks))
    write_result("sensor", result)
    return result


def bench_detect(frames: int = 500) -> dict:
    """One detect_frames run over `frames` frames next to a bare decode+detect loop."""
    import dagster as dg

    from imgpipeline.definitions import build_resources
    from imgpipeline.jobs.detect_frames import detect_frames

    resources = build_resources(Settings.from_env())
    kafka, storage, folder = fresh_topic_and_store(resources["kafka"], "detect")
    batch = bench_frames(frames)
    send_backlog(kafka, storage, folder, batch)

    bare_s = frames / bare_fps(batch, resources["detector"].load())

    run_config = {"ops": {"detect": {"config": {
        "topic": kafka.frames_topic, "partition": 0, "start_offset": 0, "end_offset": frames}}}}
    with dg.instance_for_test() as instance:
        started = time.perf_counter()
        outcome = detect_frames.execute_in_process(
            run_config=run_config, instance=instance,
            resources={**resources, "kafka": kafka, "storage": storage},
        )
        run_s = time.perf_counter() - started
    assert outcome.success
    result = {
        "frames": frames,
        "bare_fps": round(frames / bare_s, 2),
        "run_fps": round(frames / run_s, 2),
        "run_over_bare": round(bare_s / run_s, 3),
        "frame_size": f"{batch[0].width}x{batch[0].height}",
    }
    print(f"bare decode+detect loop: {result['bare_fps']} frames/s")
    print(f"detect_frames run (in process, Kafka + storage + landing): {result['run_fps']} frames/s "
          f"({result['run_over_bare']:.0%} of bare)")
    write_result("detect", result)
    return result


def _local_resources() -> dict:
    """The resources on the local services, set up as for the demo."""
    from imgpipeline.definitions import build_resources
    from imgpipeline.demo import prepare_local

    print("set-up: weights, samples, local Kafka and S3 endpoint")
    _, settings, _ = prepare_local(log=lambda line: None)
    return build_resources(settings)


def _peak_rss_of_run(kafka_fields: dict, storage_uri: str, frames: int) -> float:
    """In a fresh process: one detect_frames run over offsets [0, frames); the process's peak RSS, MB."""
    import resource

    import dagster as dg

    from imgpipeline.jobs.detect_frames import detect_frames
    from imgpipeline.resources import DetectorResource, KafkaResource, StorageResource

    kafka = KafkaResource(**kafka_fields)
    run_config = {"ops": {"detect": {"config": {
        "topic": kafka.frames_topic, "partition": 0, "start_offset": 0, "end_offset": frames}}}}
    with dg.instance_for_test() as instance:
        outcome = detect_frames.execute_in_process(
            run_config=run_config, instance=instance,
            resources={"kafka": kafka, "storage": StorageResource(uri=storage_uri),
                       "detector": DetectorResource()},
        )
    if not outcome.success:
        raise SystemExit(f"the detect_frames run over {frames} frames failed")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def bench_memory(sizes: tuple[int, ...] = (10, 500, 2000), resources: dict | None = None) -> dict:
    """Peak memory of a detect_frames run (its own process) against the number of frames in the run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    resources = resources or _local_resources()
    result = {"frames": list(sizes), "peak_rss_mb": []}
    spawn = multiprocessing.get_context("spawn")
    print(f"{'frames':>8}{'peak RSS MB':>13}")
    for size in sizes:
        kafka, storage, folder = fresh_topic_and_store(resources["kafka"], "memory")
        send_backlog(kafka, storage, folder, bench_frames(size))
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            peak = pool.submit(_peak_rss_of_run, kafka.model_dump(), storage.uri, size).result()
        result["peak_rss_mb"].append(round(peak, 1))
        print(f"{size:>8}{peak:>13.1f}")
    growth = (result["peak_rss_mb"][-1] - result["peak_rss_mb"][0]) / max(1, sizes[-1] - sizes[0]) * 1000
    result["growth_mb_per_1000_frames"] = round(growth, 2)
    print(f"growth: {growth:.2f} MB per 1,000 frames")
    write_result("memory", result)
    return result


def bench_summary(rows: int = 10_000_000, folder: Path | None = None) -> dict:
    """DuckDB's daily summary against mapper | sort | reducer over the same detection rows."""
    import subprocess
    import sys

    import duckdb

    from imgpipeline import warehouse as wh

    folder = folder or scratch_dir("summary")
    folder.mkdir(parents=True, exist_ok=True)
    frames_n = max(1, rows // 5)
    days = ["2026-11-20", "2026-11-21"]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    print(f"generating {rows:,} synthetic detection rows over {frames_n:,} frames in {folder} …")
    started = time.perf_counter()
    # Frames spread evenly over two days, 20 sources; detections 5 per frame, 10 classes.
    con.execute(f"""
        CREATE TABLE fr AS SELECT
            'f' || i AS frame_id, 'cam' || (i % 20) AS source_id,
            TIMESTAMPTZ '2026-11-20 00:00:00+00'
                + to_milliseconds(i * (172800000 // {frames_n})) AS captured_at,
            CASE WHEN i % 50 = 0 THEN 'skipped_dark' WHEN i % 97 = 0 THEN 'error'
                 ELSE 'detected' END AS status,
            640 + (i % 3) * 640 AS width, 360 + (i % 3) * 360 AS height, 20000 + i % 5000 AS bytes,
            (i * 37 % 2550) / 10.0 AS brightness
        FROM range({frames_n}) t(i)""")
    classes = ["person", "car", "bicycle", "motorbike", "bus", "truck", "dog", "cat", "bird", "bench"]
    con.execute(f"""
        CREATE TABLE de AS SELECT
            fr.frame_id, fr.source_id, fr.captured_at, CAST(d AS INTEGER) AS detection_index,
            CAST((hash(fr.frame_id || d) % 10) AS INTEGER) AS class_id,
            {classes}[CAST((hash(fr.frame_id || d) % 10) AS INTEGER) + 1] AS class_name,
            round(0.25 + (hash(fr.frame_id || d || 'c') % 7500) / 10000.0, 4) AS confidence
        FROM fr, range(5) r(d)
        LIMIT {rows}""")
    con.execute("""
        CREATE OR REPLACE TABLE de AS SELECT *, CAST(row_number() OVER (
            PARTITION BY frame_id, class_name ORDER BY confidence DESC, detection_index
        ) AS INTEGER) AS class_rank
        FROM de""")
    paths = {"frames": [], "detections": []}
    for day in days:
        for table, name in (("fr", "frames"), ("de", "detections")):
            path = folder / f"{name}-{day}.parquet"
            con.execute(f"COPY (SELECT * FROM {table} WHERE CAST(captured_at AS DATE) = DATE '{day}' "
                        f"ORDER BY captured_at) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")
            paths[name].append(str(path))
    csv_path = folder / "detections.csv"
    con.execute(f"COPY (SELECT strftime(captured_at, '%Y-%m-%d') AS day, source_id, class_name, "
                f"confidence, hour(captured_at) AS hour FROM de) TO '{csv_path}' (HEADER, DELIMITER ',')")
    print(f"  generated in {time.perf_counter() - started:.1f} s")

    # DuckDB: the daily_summary asset's own SQL, one query per day, over the Parquet files.
    started = time.perf_counter()
    duck = {}
    for day, frames_path, detections_path in zip(days, paths["frames"], paths["detections"], strict=True):
        sql = wh.daily_summary_sql(date.fromisoformat(day), [frames_path], [detections_path])
        for row in duckdb.connect().execute("SET TimeZone = 'UTC'").execute(sql).fetchall():
            _, source, class_name, _, _, objects, mean, best, hours = row[:9]
            duck[f"{day}|{source}|{class_name}"] = (objects, mean, best, list(hours))
    duckdb_s = time.perf_counter() - started
    print(f"DuckDB daily summary: {duckdb_s:.2f} s ({len(duck)} rows)")

    started = time.perf_counter()
    python = sys.executable
    pipeline = (f"'{python}' -m imgpipeline.mapreduce map < '{csv_path}' "
                f"| LC_ALL=C sort -t \"$(printf '\\t')\" -k1,1 -S 25% --parallel=2 -T '{folder}' "
                f"| '{python}' -m imgpipeline.mapreduce reduce")
    output = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True,
                            check=True).stdout
    mapreduce_s = time.perf_counter() - started
    mapped = {}
    for line in output.splitlines():
        key, objects, mean, best, hours = line.split("\t")
        mapped[key] = (int(objects), float(mean), float(best), [int(h) for h in hours.split()])
    print(f"mapper | sort | reducer: {mapreduce_s:.2f} s ({len(mapped)} rows)")

    same = set(duck) == set(mapped) and all(
        duck[k][0] == mapped[k][0] and abs(duck[k][1] - mapped[k][1]) < 1e-9
        and duck[k][2] == mapped[k][2] and duck[k][3] == mapped[k][3] for k in duck
    )
    if not same:
        raise SystemExit("DuckDB and mapper|sort|reducer disagree: the benchmark is void")
    result = {"rows": rows, "duckdb_s": round(duckdb_s, 3), "mapreduce_s": round(mapreduce_s, 3),
              "ratio": round(mapreduce_s / duckdb_s, 1), "same_numbers": same}
    print(f"same numbers: yes; DuckDB is {result['ratio']}× faster")
    write_result("summary", result)
    return result


# -- the pipeline against the bare detector and a plain consumer --------------------------------

def bench_frames(count: int):
    """`count` frames of bikes.mp4 (repeated as needed), with unique ids."""
    from imgpipeline.fetch import sample
    from imgpipeline.ingest.producer import Frame
    from imgpipeline.ingest.sources import video_frames

    video = list(video_frames(str(sample("bikes.mp4")), "bench", start=datetime.now(UTC)))
    run = uuid.uuid4().hex[:6]
    return [Frame(f"bench-{run}-{i:06d}", f.data, f.captured, f.width, f.height)
            for i, f in enumerate(video[i % len(video)] for i in range(count))]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def send_frames(producer, frames, rate: float | None, sent_at: dict[str, float]) -> None:
    """Send at `rate` frames/s (or as fast as possible), recording each send time."""
    started = time.monotonic()
    for index, frame in enumerate(frames):
        if rate:
            time.sleep(max(0.0, started + index / rate - time.monotonic()))
        sent_at[frame.frame_id] = time.time()
        producer.send(frame)
        if rate:
            producer.flush()
    producer.flush()


def bare_fps(frames, detector) -> float:
    from imgpipeline.vision.quality import decode_image

    started = time.perf_counter()
    for frame in frames:
        detector.detect(decode_image(frame.data))
    return len(frames) / (time.perf_counter() - started)


def run_pipeline(frames, kafka, storage, rate, timeout_s: float, log=print) -> dict:
    """Produce → Kafka → frames_sensor → detect_frames runs launched by a real daemon → landing."""
    import os
    import threading

    from imgpipeline.ingest.producer import FrameProducer, Ledger
    from imgpipeline.jobs.detect_frames import LANDING
    from imgpipeline.services import LocalServices

    home = scratch_dir("home")
    overrides = {"IMGPIPELINE_HOME": str(home), "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                 "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic, "IMGPIPELINE_STORAGE_URI": storage.uri}
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    local = LocalServices(home / ".imgpipeline")
    try:
        log("  starting dagster dev (daemon, sensor) …")
        local.up_ui()
        producer = FrameProducer(kafka, storage, "bench", ledger=Ledger(home / "ledger"), flush_every=100)
        store, seen_files = storage.open(), set()
        landed_at: dict[str, float] = {}
        deadline = time.monotonic() + timeout_s

        def wait_for(count: int) -> None:
            while len(landed_at) < count and time.monotonic() < deadline:
                for key in store.list(f"{LANDING}/"):
                    if key not in seen_files:
                        seen_files.add(key)
                        now = time.time()
                        for line in store.get(key).splitlines():
                            landed_at.setdefault(json.loads(line)["frame_id"], now)
                time.sleep(0.25)

        # One warm-up frame through the whole path: the daemon, the sensor and the code server
        # are running when the measured frames arrive, as in steady operation.
        warm_up = frames[0]
        send_frames(producer, [type(warm_up)(warm_up.frame_id + "-warm-up", warm_up.data, warm_up.captured,
                                             warm_up.width, warm_up.height)], None, {})
        wait_for(1)
        landed_at.clear()
        sent_at: dict[str, float] = {}
        sender = threading.Thread(target=send_frames, args=(producer, frames, rate, sent_at))
        sender.start()
        wait_for(len(frames))
        sender.join()
        producer.producer.close()
        runs = run_timings(local.dagster.dagster_home, since=min(sent_at.values()))
    finally:
        local.dagster.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if len(landed_at) < len(frames):
        raise SystemExit(f"only {len(landed_at)} of {len(frames)} frames landed within {timeout_s:.0f} s; "
                         f"see {local.dagster.logfile}")
    return {"sent_at": sent_at, "done_at": landed_at, "runs": runs}


def run_timings(dagster_home: Path, since: float) -> dict:
    """Where the pipeline's fixed costs went, from the runs its daemon recorded after `since`."""
    import dagster as dg

    from imgpipeline.launcher import PID_TAG

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = [r for r in instance.get_run_records(dg.RunsFilter(job_name="detect_frames"))
                   if r.create_timestamp.timestamp() >= since]
    created = [r.create_timestamp.timestamp() for r in records]
    startups = [r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time]
    return {
        "runs": len(records),
        # first frame sent → its run created: the sensor's tick and wait
        "first_launch_s": round(min(created) - since, 2) if created else None,
        # run created → run started: the queue, the run process and the code location loading
        "run_startup_s": round(sum(startups) / len(startups), 2) if startups else None,
        # runs forked from the launcher's warm server (the others started a new interpreter)
        "runs_forked": sum(PID_TAG in r.dagster_run.tags for r in records),
    }


def run_plain_consumer(frames, kafka, storage, rate) -> dict:
    """The older pipelines' way: one consumer loop; per message fetch, detect, write one JSON file."""
    import threading

    from kafka import TopicPartition

    from imgpipeline.ingest.messages import parse_message
    from imgpipeline.ingest.producer import FrameProducer, Ledger
    from imgpipeline.resources import DetectorResource
    from imgpipeline.vision.quality import decode_image

    detector = DetectorResource(threads=0).load()
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


def bench_pipeline(frames: int = 1000, rate: float | None = None, timeout_s: float = 1800.0,
                   resources: dict | None = None, repeat: int = 1) -> dict:
    """Bare detector, the whole pipeline through a real daemon, and a plain consumer, on the same frames.

    With `repeat` > 1 the pipeline and the plain consumer race again, in alternating order, with a
    bare loop between rounds; the figures are medians over rounds and each round is kept.
    Without resources, the local services are set up as for the demo.
    """
    from statistics import median

    from imgpipeline.resources import DetectorResource

    if repeat < 1:
        raise SystemExit(f"--repeat {repeat}: use 1 or more rounds")
    resources = resources or _local_resources()
    batch = bench_frames(frames)
    # The bare loop and the plain consumer are single processes: they get OpenCV's default
    # threads (all cores), their best case.
    detector = DetectorResource(threads=0).load()
    mode = f"at {rate:g} frames/s" if rate else "as a backlog"
    print(f"bare: decode + detect over {frames} frames …")
    bares = [bare_fps(batch, detector)]
    rounds, latencies = [], []

    def pipeline_leg(round_: dict) -> None:
        print(f"pipeline: {frames} frames {mode} → Kafka → frames_sensor → detect_frames (daemon) …")
        kafka, storage, _ = fresh_topic_and_store(resources["kafka"], "pipeline")
        timing = run_pipeline(batch, kafka, storage, rate, timeout_s)
        round_["pipeline_fps"], lat = _rates(timing)
        latencies.append(lat)
        round_.update(timing["runs"])

    def plain_leg(round_: dict) -> None:
        print(f"plain consumer: the same {frames} frames {mode} …")
        kafka, storage, _ = fresh_topic_and_store(resources["kafka"], "plain")
        round_["plain_consumer_fps"], round_["plain_latencies"] = _rates(
            run_plain_consumer(batch, kafka, storage, rate))

    for index in range(repeat):
        if repeat > 1:
            print(f"round {index + 1} of {repeat}")
        round_: dict = {}
        # This machine's speed drifts over minutes: the two legs swap places every round, and
        # each round is compared with the bare loops run just before and just after it.
        for leg in (pipeline_leg, plain_leg) if index % 2 == 0 else (plain_leg, pipeline_leg):
            leg(round_)
        print("bare again …")
        bares.append(bare_fps(batch, detector))
        round_["bare_fps"] = (bares[-2] + bares[-1]) / 2
        round_["efficiency"] = round_["pipeline_fps"] / round_["bare_fps"]
        rounds.append(round_)

    def mid(key: str) -> float:
        return median(r[key] for r in rounds)

    pipeline_lat = [x for lat in latencies for x in lat]
    plain_lat = [x for r in rounds for x in r.pop("plain_latencies")]
    result = {
        "frames": frames, "rate": rate,
        "bare_fps": round(mid("bare_fps"), 2), "pipeline_fps": round(mid("pipeline_fps"), 2),
        "plain_consumer_fps": round(mid("plain_consumer_fps"), 2), "efficiency": round(mid("efficiency"), 3),
        "latency_p50_s": round(percentile(pipeline_lat, 0.5), 2),
        "latency_p95_s": round(percentile(pipeline_lat, 0.95), 2),
        "plain_latency_p50_s": round(percentile(plain_lat, 0.5), 2),
        "plain_latency_p95_s": round(percentile(plain_lat, 0.95), 2),
        "bare_fps_each": [round(b, 2) for b in bares],
        "runs": rounds[0]["runs"], "first_launch_s": rounds[0]["first_launch_s"],
        "run_startup_s": rounds[0]["run_startup_s"], "runs_forked": rounds[0]["runs_forked"],
        "rounds": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rounds],
        "pipeline_wins": sum(r["pipeline_fps"] > r["plain_consumer_fps"] for r in rounds),
        # Paired within each round, so the machine's drift between rounds cancels out.
        "pipeline_vs_plain": round(median(r["pipeline_fps"] / r["plain_consumer_fps"] for r in rounds), 3),
    }
    print(f"\n{'':<16}{'frames/s':>10}{'p50 s':>9}{'p95 s':>9}")
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
    print(f"pipeline: {result['runs']} runs ({result['runs_forked']} forked from the warm server); "
          f"first run created {result['first_launch_s']} s after the first frame was sent; "
          f"runs took {result['run_startup_s']} s on average to start")
    write_result("pipeline", result)
    return result


def bench_detector(frames: int = 100) -> dict:
    """Input sizes 320/416/608: frames/s and objects found on the same frames."""
    from imgpipeline.resources import DetectorResource
    from imgpipeline.vision.quality import decode_image

    images = [decode_image(f.data) for f in bench_frames(frames)]
    result = {"frames": frames, "sizes": {}}
    print(f"{'size':>6}{'frames/s':>10}{'objects':>9}")
    for size in (320, 416, 608):
        detector = DetectorResource(input_size=size).load()
        started = time.perf_counter()
        objects = sum(len(detector.detect(image)) for image in images)
        fps = frames / (time.perf_counter() - started)
        result["sizes"][str(size)] = {"fps": round(fps, 2), "objects": objects}
        print(f"{size:>6}{fps:>10.2f}{objects:>9}")
    write_result("detector", result)
    return result
