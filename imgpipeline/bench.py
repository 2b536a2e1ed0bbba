"""`imgpipeline bench …`: figures, printed and written to `.imgpipeline/bench/`; never asserted."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

from imgpipeline.config import Settings, state_dir


def write_result(name: str, result: dict) -> Path:
    folder = state_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {path}")
    return path


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
    from imgpipeline.fetch import sample
    from imgpipeline.ingest.producer import FrameProducer, Ledger
    from imgpipeline.ingest.sources import video_frames
    from imgpipeline.jobs.detect_frames import detect_frames
    from imgpipeline.resources import KafkaResource, StorageResource
    from imgpipeline.vision.quality import decode_image

    settings = Settings.from_env()
    resources = build_resources(settings)
    kafka = KafkaResource(**{**resources["kafka"].model_dump(),
                             "frames_topic": f"bench-{uuid.uuid4().hex[:8]}"})
    kafka.ensure_topics(partitions=1)
    folder = Path(tempfile.mkdtemp(prefix="imgpipeline-bench-"))
    storage = StorageResource(uri=(folder / "store").as_uri())
    video = list(video_frames(str(sample("bikes.mp4")), "bench", start=datetime.now(UTC)))
    batch = [video[i % len(video)] for i in range(frames)]
    batch = [type(f)(f"bench-{i:06d}", f.data, f.captured, f.width, f.height) for i, f in enumerate(batch)]
    FrameProducer(kafka, storage, "bench", ledger=Ledger(folder / "ledger")).send_all(batch, progress=False)

    detector = resources["detector"].load()
    started = time.perf_counter()
    for frame in batch:
        detector.detect(decode_image(frame.data))
    bare_s = time.perf_counter() - started

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


def bench_summary(rows: int = 10_000_000, folder: Path | None = None) -> dict:
    """DuckDB's daily summary against mapper | sort | reducer over the same detection rows."""
    import subprocess
    import sys

    import duckdb

    from imgpipeline import warehouse as wh

    folder = folder or Path(tempfile.mkdtemp(prefix="imgpipeline-bench-summary-"))
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
