"""`imgpipeline bench summary`: DuckDB's daily summary against `mapper | sort | reducer`."""

from __future__ import annotations

import statistics
import time
from datetime import date
from pathlib import Path

from imgpipeline.cli.bench.common import scratch_dir, write_result

DAYS = ["2026-11-20", "2026-11-21"]
ROUNDS = 3  # the summary timed this many times over the same files: the median is printed


def bench_summary(rows: int = 10_000_000, folder: Path | None = None) -> dict:
    """DuckDB's daily summary against mapper | sort | reducer over the same detection rows: as the asset
    runs it (over the class_hours the hourly builds make) and over the detections alone."""
    folder = folder or scratch_dir("summary")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"generating {rows:,} synthetic detection rows over {max(1, rows // 5):,} frames in {folder} …")
    started = time.perf_counter()
    paths, csv_path = generate(rows, folder)
    print(f"  generated in {time.perf_counter() - started:.1f} s")

    import imgpipeline.defs.warehouse.sql  # noqa: F401  (imported before the clock, as a code location has it)

    started = time.perf_counter()
    paths["class_hours"] = make_class_hours(paths["detections"], folder)
    made_s = time.perf_counter() - started
    print(f"class_hours made from the {rows:,} detections (the hourly builds make them an hour at a time, "
          f"as each hour lands): {made_s:.2f} s")

    duckdb_s, (duck, summed), first_s = timed(lambda: duckdb_summary(paths))
    print(f"DuckDB daily summary, as the asset runs it (frames and class_hours): {duckdb_s:.2f} s, median of "
          f"{ROUNDS} (the first {first_s:.2f} s; {len(duck)} rows)")
    detections_s, (from_detections, _), _ = timed(lambda: duckdb_summary({**paths, "class_hours": []}))
    print(f"DuckDB daily summary over the detections alone (hours without class_hours): {detections_s:.2f} s")

    started = time.perf_counter()
    mapped = mapreduce_summary(csv_path, folder)
    mapreduce_s = time.perf_counter() - started
    print(f"mapper | sort | reducer: {mapreduce_s:.2f} s ({len(mapped)} rows)")

    same = agree(duck, mapped) and agree(from_detections, mapped)
    if not same:
        raise SystemExit("DuckDB and mapper|sort|reducer disagree: the benchmark is void")
    if (differ := differences(duck, from_detections)):
        raise SystemExit(f"the summary over class_hours and over the detections differ: {differ[:5]}")
    result = {"rows": rows, "duckdb_s": round(duckdb_s, 3), "duckdb_first_s": round(first_s, 3),
              "class_hours_made_s": round(made_s, 3), "days_summed_from_class_hours": summed,
              "from_detections_s": round(detections_s, 3),
              "mapreduce_s": round(mapreduce_s, 3), "ratio": round(mapreduce_s / duckdb_s, 1),
              "from_detections_ratio": round(mapreduce_s / detections_s, 1), "same_numbers": same}
    print(f"same numbers: yes; DuckDB is {result['ratio']}× faster "
          f"({result['from_detections_ratio']}× over the detections alone)")
    write_result("summary", result)
    return result


def timed(summary) -> tuple[float, dict, float]:
    """The median of ROUNDS runs of a summary, its result, and the first run's time."""
    spent = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        result = summary()
        spent.append(time.perf_counter() - started)
    return statistics.median(spent), result, spent[0]


def agree(duck: dict, mapped: dict) -> bool:
    """The mapper's figures (objects, mean and max confidence, objects per hour) are DuckDB's."""
    return set(duck) == set(mapped) and all(
        duck[k]["objects"] == mapped[k][0] and abs(duck[k]["mean_confidence"] - mapped[k][1]) < 1e-9
        and duck[k]["max_confidence"] == mapped[k][2] and duck[k]["objects_per_hour"] == mapped[k][3]
        for k in duck)


def differences(one: dict, other: dict) -> list[str]:
    """Where two DuckDB summaries differ, in any column (a mean beyond 1e-9: DuckDB's parallel sums
    may add in another order from one run to the next)."""
    import math

    if set(one) != set(other):
        return [f"rows {sorted(set(one) ^ set(other))[:5]}"]
    return [f"{k} {name}" for k in one for name, value in one[k].items()
            if (not math.isclose(value, other[k][name], rel_tol=1e-9, abs_tol=1e-9)
                if isinstance(value, float) and other[k][name] is not None else value != other[k][name])]


def generate(rows: int, folder: Path) -> tuple[dict[str, list[str]], Path]:
    """Synthetic frames and detections over two days: Parquet per table and day, and the CSV the
    mapper reads."""
    import duckdb

    frames_n = max(1, rows // 5)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # Frames spread evenly over two days, 20 sources; detections 5 per frame, 10 classes.
    con.execute("""
        CREATE TABLE fr AS SELECT
            'f' || i AS frame_id, 'cam' || (i % 20) AS source_id,
            TIMESTAMPTZ '2026-11-20 00:00:00+00'
                + to_milliseconds(i * (172800000 // $frames)) AS captured_at,
            CASE WHEN i % 50 = 0 THEN 'skipped_dark' WHEN i % 97 = 0 THEN 'error'
                 ELSE 'detected' END AS status,
            640 + (i % 3) * 640 AS width, 360 + (i % 3) * 360 AS height, 20000 + i % 5000 AS bytes,
            (i * 37 % 2550) / 10.0 AS brightness,
            'yolov4-tiny-416' AS model, 'synthetic' AS model_sha256, 'synthetic' AS engine, 'f32' AS precision
        FROM range($frames) t(i)""", {"frames": frames_n})
    classes = ["person", "car", "bicycle", "motorbike", "bus", "truck", "dog", "cat", "bird", "bench"]
    con.execute("""
        CREATE TABLE de AS SELECT
            fr.frame_id, fr.source_id, fr.captured_at, CAST(d AS INTEGER) AS detection_index,
            CAST((hash(fr.source_id || '/' || d || '/' || (epoch_ms(fr.captured_at) // 60000)) % 10)
                 AS INTEGER) AS class_id,
            $classes[CAST((hash(fr.source_id || '/' || d || '/' || (epoch_ms(fr.captured_at) // 60000)) % 10)
                     AS INTEGER) + 1] AS class_name,
            round(0.25 + (hash(fr.frame_id || d || 'c') % 7500) / 10000.0, 4) AS confidence,
            -- an object per source and detection slot for a minute, as a tracker would give: one class
            -- each, as the tracker tracks each class on its own
            CAST(hash(fr.source_id || '/' || d || '/' || (epoch_ms(fr.captured_at) // 60000)) >> 12
                 AS BIGINT) AS track_id,
            fr.model, fr.model_sha256, fr.engine, fr.precision
        FROM fr, range(5) r(d)
        LIMIT $rows""", {"classes": classes, "rows": rows})
    con.execute("""
        CREATE OR REPLACE TABLE de AS SELECT *, CAST(row_number() OVER (
            PARTITION BY frame_id, class_name ORDER BY confidence DESC, detection_index
        ) AS INTEGER) AS class_rank
        FROM de""")
    paths = {"frames": [], "detections": []}
    for day in DAYS:
        for table, name in (("fr", "frames"), ("de", "detections")):
            path = folder / f"{name}-{day}.parquet"
            con.execute(f"COPY (SELECT * FROM {table} WHERE CAST(captured_at AS DATE) = CAST($day AS DATE) "
                        "ORDER BY captured_at) TO $path (FORMAT parquet, COMPRESSION zstd, "
                        "KV_METADATA {'imgpipeline.build': $build})",
                        {"day": day, "path": str(path), "build": f"bench-{day}"})
            paths[name].append(str(path))
    csv_path = folder / "detections.csv"
    con.sql("SELECT strftime(captured_at, '%Y-%m-%d') AS day, source_id, class_name, confidence, "
            "hour(captured_at) AS hour FROM de").write_csv(str(csv_path), header=True, sep=",")
    return paths, csv_path


def make_class_hours(detections_paths: list[str], folder: Path) -> list[str]:
    """Each day's class_hours rows from its detections by the hourly build's SQL, stamped with their build."""
    import duckdb

    from imgpipeline.defs.warehouse.sql import BUILT_BY, MADE_BY, class_hours_sql, class_hours_version

    made = []
    for day, detections in zip(DAYS, detections_paths, strict=True):
        path = folder / f"class_hours-{day}.parquet"
        con = duckdb.connect().execute("SET TimeZone = 'UTC'")
        con.execute(f"COPY ({class_hours_sql('read_parquet($detections)')}) TO $path "
                    f"(FORMAT parquet, COMPRESSION zstd, KV_METADATA {{'{BUILT_BY}': $build, "
                    f"'{MADE_BY}': $version}})",
                    {"detections": detections, "path": str(path), "build": f"bench-{day}",
                     "version": class_hours_version()})
        made.append(str(path))
    return made


def duckdb_summary(paths: dict[str, list[str]]) -> tuple[dict[str, tuple], int]:
    """The daily_summary asset's own SQL, one query per day, over the Parquet files: a day's class_hours
    where it is of the day's detections (summary_sources), else the detections; with the number of days
    summed from class_hours."""
    import duckdb

    from imgpipeline.defs.warehouse.sql import query_daily_summary, summary_sources

    duck, summed = {}, 0
    for i, (day, frames_path) in enumerate(zip(DAYS, paths["frames"], strict=True)):
        con = duckdb.connect().execute("SET TimeZone = 'UTC'")
        made = {day: paths["class_hours"][i]} if paths["class_hours"] else {}
        class_hours, detections = summary_sources(con, {day: paths["detections"][i]}, made)
        summed += len(class_hours)
        result = query_daily_summary(con, date.fromisoformat(day), [frames_path], detections, class_hours)
        names = [column[0] for column in result.description]
        for row in map(lambda values: dict(zip(names, values, strict=True)), result.fetchall()):
            duck[f"{day}|{row['source_id']}|{row['class_name']}"] = {
                **row, "objects_per_hour": list(row["objects_per_hour"])}
    return duck, summed


def mapreduce_summary(csv_path: Path, folder: Path) -> dict[str, tuple]:
    """The older pipelines' Hadoop-streaming job, as `mapper | sort | reducer` on this machine."""
    import subprocess
    import sys

    python = sys.executable
    pipeline = (f"'{python}' -m imgpipeline.cli.bench.mapreduce map < '{csv_path}' "
                f"| LC_ALL=C sort -t \"$(printf '\\t')\" -k1,1 -S 25% --parallel=2 -T '{folder}' "
                f"| '{python}' -m imgpipeline.cli.bench.mapreduce reduce")
    output = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True,
                            check=True).stdout
    mapped = {}
    for line in output.splitlines():
        key, objects, mean, best, hours = line.split("\t")
        mapped[key] = (int(objects), float(mean), float(best), [int(h) for h in hours.split()])
    return mapped
