"""`imgpipeline bench viewer`: how long the viewer's pages take over a day of many frames, and how large
the daily report of that day is.

The day is synthetic (made like `bench summary`'s data, in the warehouse's own layout and schemas): 24
hourly files per table, 20 sources, 5 detections per frame with track ids, a few hundred alerts. The
pages are requested over HTTP from the app under uvicorn, as a browser would, once cold (the first
request builds the views) and then five times warm (median). Then the same day is re-detected by a
second model (its boxes moved a little, every tenth dropped) and compared with the live one, as the
Compare page does, in a process of its own: its peak memory.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from datetime import UTC, date, datetime
from pathlib import Path

from imgpipeline.cli.bench.common import scratch_dir, write_result

DAY = date(2026, 11, 20)
CLASSES = ["person", "car", "bicycle", "motorbike", "bus", "truck", "dog", "cat", "bird", "bench"]


def write_images(folder: Path, count: int = 8) -> list[str]:
    """A few real JPEGs of noise under the folder (thumbnails are drawn from them): their URIs."""
    import numpy as np

    from imgpipeline.vision.quality import encode_jpeg

    images = []
    for k in range(count):
        path = folder / f"frames/bench/{DAY}/img-{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(k)
        path.write_bytes(encode_jpeg(rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)))
        images.append(path.as_uri())
    return images


def generate(frames: int, folder: Path) -> None:
    """A day of synthetic frames, detections and alerts under the warehouse layout, with a few real
    JPEGs that every frame points at."""
    import duckdb

    from imgpipeline.defs.tables import TABLES
    from imgpipeline.defs.tables.views import duckdb_type
    from imgpipeline.resources import StorageResource

    store = StorageResource(uri=folder.as_uri()).open()
    images = write_images(folder)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    captured = "CAST($day AS TIMESTAMPTZ) + to_milliseconds(i * (86400000 // $frames))"
    # Per table: its SELECT and the values it takes as parameters.
    made = {
        "frames": (f"""
            SELECT 'f' || i AS frame_id, 'cam' || (i % 20) AS source_id, 'f' || i || '.jpg' AS file_name,
                   $images[i % 8 + 1] AS uri,
                   {captured} AS captured_at, captured_at + INTERVAL 1 SECOND AS ingested_at,
                   captured_at + INTERVAL 3 SECOND AS processed_at,
                   CASE WHEN i % 50 = 0 THEN 'skipped_dark' WHEN i % 97 = 0 THEN 'error' ELSE 'detected' END
                       AS status,
                   1280 AS width, 720 AS height, 20000 + i % 50000 AS bytes,
                   (i * 37 % 2550) / 10.0 AS brightness,
                   5 AS object_count, 'frames' AS topic, 0 AS partition, i AS offset,
                   'yolov4-tiny-416' AS model
            FROM range($frames) t(i)""", {"day": DAY, "frames": frames, "images": images}),
        "detections": (f"""
            SELECT 'f' || i AS frame_id, 'cam' || (i % 20) AS source_id,
                   {captured} AS captured_at, d AS detection_index,
                   CAST(hash(i, d) % 10 AS INTEGER) AS class_id,
                   $classes[CAST(hash(i, d) % 10 AS INTEGER) + 1] AS class_name,
                   0.25 + (hash(i, d, 'c') % 7500) / 10000.0 AS confidence, 1 AS class_rank,
                   100 * d AS x, 100 AS y, 80 AS w, 160 AS h,
                   CAST(hash(i % 20, d, i // 300) >> 12 AS BIGINT) AS track_id, 'yolov4-tiny-416' AS model
            FROM range($frames) t(i), range(5) r(d)""", {"day": DAY, "frames": frames, "classes": CLASSES}),
        "alerts": ("""
            SELECT n + 1 AS number,
                   CAST($day AS TIMESTAMPTZ) + to_milliseconds(n * 288000) AS fired_at,
                   date_trunc('hour', fired_at) AS hour_start, 'cam' || (n % 20) AS source_id,
                   'person-on-road' AS rule, 'zone_enter' AS kind, 'critical' AS severity,
                   'person entered zone road' AS detail, 'f' || (n * 333) AS frame_id,
                   ['f' || (n * 333)] AS frame_ids, 'bench-' || n AS alert_key
            FROM range(300) t(n)""", {"day": DAY}),
    }
    for table, (select, values) in made.items():
        schema = TABLES[table].schema
        con.execute(f"CREATE TABLE {table} AS {select}", values)
        have = {row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()}
        columns = ", ".join(
            f'CAST({chr(34) + f.name + chr(34) if f.name in have else "NULL"} AS {duckdb_type(f.type)}) '
            f'AS "{f.name}"' for f in schema)
        time_column = "fired_at" if table == "alerts" else "captured_at"
        for hour in range(24):  # written as the tables write them (in their types: ms, not DuckDB's µs)
            rows = con.sql(f"SELECT {columns} FROM {table} WHERE hour({time_column}) = ? "
                           f"ORDER BY {time_column}", params=[hour]).to_arrow_table().cast(schema)
            TABLES[table].write(store, TABLES[table].hour_key(_hour(hour)), rows)


def _hour(hour: int) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hour, tzinfo=UTC)


def redetected(folder: Path, model: str = "yolov3-tiny") -> None:
    """The day's detections as a second model would give them: the same frames, boxes moved by a few
    pixels, every tenth left out, in the laboratory's files."""
    import duckdb

    from imgpipeline.defs.laboratory.redetect import part_key
    from imgpipeline.defs.tables import DETECTIONS, REDETECTIONS
    from imgpipeline.resources import StorageResource

    store, con = StorageResource(uri=folder.as_uri()).open(), duckdb.connect()
    for hour in range(24):
        con.register("live", DETECTIONS.stored_hour(store, _hour(hour)).replace_schema_metadata(None))
        rows = con.sql(f"""SELECT * REPLACE (x + CAST(hash(frame_id, detection_index) % 9 AS INTEGER) AS x,
                                             '{model}-416' AS model)
                           FROM live WHERE hash(frame_id, detection_index) % 10 <> 0""")
        REDETECTIONS.write(store, part_key(_hour(hour), model), rows.to_arrow_table().cast(DETECTIONS.schema))


def compare_peak_mb(folder: Path, model: str = "yolov3-tiny") -> float:
    """The peak memory (MB) of a process that compares the day under the live model and `model`, as the
    Compare page does: what the comparison itself holds above a process that has imported it all."""
    import subprocess
    import sys

    script = f"""
import resource
from imgpipeline.cli.laboratory import day_hours
from imgpipeline.defs.laboratory import history
from imgpipeline.resources import AlertsResource, StorageResource, TrackingResource
from imgpipeline.vision import alert_rules
from datetime import date
store = StorageResource(uri={folder.as_uri()!r}).open()
rules = alert_rules.parse(b"rules: []", "no rules")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
found = history.compare_hours(store, day_hours(date.fromisoformat({DAY.isoformat()!r})), "yolov4-tiny",
                              {model!r}, rules, TrackingResource(zones_file="none").zones())
assert found["compared"], found["left_out"]
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, sum(c["matched"] for c in found["classes"]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the comparison failed:\n{done.stderr[-2000:]}")
    before, peak, matched = (int(n) for n in done.stdout.split()[-3:])
    print(f"compare: {matched:,} boxes matched; peak {peak / 1024:.0f} MB, {(peak - before) / 1024:.0f} MB "
          "above the process before it began")
    return round((peak - before) / 1024, 1)


def pages(frames: int) -> list[tuple[str, str]]:
    """The pages timed, by name; the frame pages show a frame of cam7 from the middle of the day."""
    frame = f"/frames/{DAY}/cam7/f{(frames // 2) // 20 * 20 + 7}"
    return [
        ("day", f"/?date={DAY}"),
        ("alerts", f"/alerts?date={DAY}"),
        ("alert", "/alerts/150"),
        ("frames", f"/frames?date={DAY}"),
        ("frame search", f"/frames?date={DAY}&source=cam7&class=dog&start=10:00&end=14:00&name=7.jpg"),
        ("frame", frame),
        ("thumbnail", f"{frame}/thumb.jpg"),
        ("charts", f"/charts?date={DAY}"),
        ("operations", f"/operations?date={DAY}"),
        ("report", f"/reports/{DAY}"),
    ]


def _get(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        size = len(response.read())
        assert response.status == 200, (url, response.status)
    return time.perf_counter() - started, size


def bench_viewer(frames: int = 100_000) -> dict:
    """Page load times over one day of `frames` frames, and the size of its daily report."""
    from imgpipeline.cli.serve import Running, Warehouse
    from imgpipeline.defs.tables.views import connect
    from imgpipeline.resources import AlertsResource, StorageResource, TrackingResource
    from imgpipeline.web import render
    from imgpipeline.web.app import create_app

    folder = scratch_dir("viewer")
    print(f"generating a day of {frames:,} frames ({frames * 5:,} detections, 300 alerts) in {folder} …")
    started = time.perf_counter()
    generate(frames, folder)
    print(f"  generated in {time.perf_counter() - started:.1f} s")
    storage = StorageResource(uri=folder.as_uri())
    tracking, alerts = TrackingResource(zones_file="none"), AlertsResource(alerts_file="none")
    started = time.perf_counter()
    html = render.report(connect(storage), DAY, None, {}, alerts.viewer_url)
    report_s = time.perf_counter() - started
    storage.open().put(render.report_key(DAY), html.encode())
    print(f"daily report: {len(html) / 1024:.0f} KB, rendered in {report_s:.2f} s")
    running = Running(create_app(Warehouse(storage, tracking, alerts, refresh_s=3600)))
    figures = {}
    try:
        print(f"{'page':<14} {'cold s':>7} {'warm s':>7} {'KB':>7}")
        for name, path in pages(frames):
            cold, size = _get(running.url + path)
            warm = statistics.median(_get(running.url + path)[0] for _ in range(5))
            figures[name] = {"cold_s": round(cold, 3), "warm_s": round(warm, 3), "kb": round(size / 1024, 1)}
            print(f"{name:<14} {cold:>7.3f} {warm:>7.3f} {size / 1024:>7.1f}")
    finally:
        running.stop()
    redetected(folder)
    result = {"frames": frames, "detections": frames * 5, "alerts": 300, "pages": figures,
              "report_kb": round(len(html) / 1024, 1), "report_render_s": round(report_s, 2),
              "compare_peak_mb_above_start": compare_peak_mb(folder)}
    write_result("viewer", result)
    return result
