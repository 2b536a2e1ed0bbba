"""`imgpipeline demo`: the whole pipeline end to end on the embedded defaults.

Fetches the model and sample data, starts the local broker, S3 endpoint and `dagster dev`
(whose daemon runs frames_sensor), produces the street video and two photos, waits until
every frame has landed, and prints what was found.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta

from imgpipeline.cli.fetch import fetch_model
from imgpipeline.cli.local import local_services, run_checks
from imgpipeline.cli.samples import fetch_samples
from imgpipeline.environment import write_services_env
from imgpipeline.resources.storage import Storage


def prepare_local(log=print):
    """Weights, sample data and the local broker and S3 endpoint, as the embedded defaults need.

    Returns the services, the resources (now pointing at them) and the sample paths.
    """
    from imgpipeline.configuration import Settings

    fetch_model(log=log)
    samples = fetch_samples()
    services = local_services()
    for status in services.up(log=log):
        log(f"  {status['name']:<8} ready at {status['address']}")
    write_services_env(services.env_file_text())
    run_checks(log=lambda line: None)
    return services, Settings.from_env().checked().resources(), samples


def demo(args) -> int:
    return run_demo()


def run_demo(timeout_s: float = 600.0) -> int:
    from imgpipeline.defs.streaming.batch_policy import BatchPolicy
    from imgpipeline.ingest.producer import FrameProducer
    from imgpipeline.ingest.sources import image_frame, video_frames

    print("1/4 set-up: model weights, sample data, local Kafka broker, S3 endpoint, Dagster")
    services, resources, samples = prepare_local()
    ui = services.up_ui()
    print(f"  dagster ready at {ui['address']}")

    print("2/4 producing a street video and two photos to Kafka")
    ids: list[str] = []

    def remember(frames):
        for frame in frames:
            ids.append(frame.frame_id)
            yield frame

    # The video is dated a few minutes ago, so its frames fall into the last hours.
    start = datetime.now(UTC) - timedelta(minutes=5)
    video = FrameProducer(resources["kafka"], resources["storage"], "street-cam")
    print("  street-cam (bikes.mp4): " + video.send_all(
        remember(video_frames(str(samples["bikes.mp4"]), "street-cam", start=start))).line())
    photos = FrameProducer(resources["kafka"], resources["storage"], "photos")
    stills = [image_frame(samples[name], name.split(".")[0], None) for name in ("bus.jpg", "zidane.jpg")]
    print("  photos (bus.jpg, zidane.jpg): " + photos.send_all(remember(stills), progress=False).line())

    lane = ("keeps a follow_frames run detecting frames as they come (the fast lane)"
            if BatchPolicy.from_env().fast_lane else "launches detect_frames runs")
    print(f"3/4 frames_sensor {lane}; waiting for the landing metadata")
    records = wait_for_landing(resources["storage"].open(), set(ids), timeout_s)
    if records is None:
        print(f"  not all frames landed within {timeout_s:.0f} s; see the runs at {ui['address']}/runs")
        return 1
    report(records)

    print("4/4 hourly frames/detections/class_hours (Parquet), tracks and object counts, alerts, "
          "daily_summary (DuckDB), "
          "daily_report")
    days = build_warehouse(records, services, resources)
    from imgpipeline.defs.tables.views import SUMMARY_SQL, connect

    con = connect(resources["storage"], days=[date.fromisoformat(day) for day in days])
    for day in days:
        print(f"\ndaily_summary {day}:")
        con.sql(SUMMARY_SQL, params=[day]).show(max_rows=40, max_width=200)
    report_counts(con, days, resources["tracking"].zones())
    report_alerts(con, days)
    viewer = services.up_viewer()
    print(f"\nViewer: {viewer['address']}/?date={days[-1]}  (alerts by number, frames, charts, operations; "
          f"report: {viewer['address']}/reports/{days[-1]})")
    print(f"Dagster UI: {ui['address']}  (lineage graph: {ui['address']}/asset-groups)")
    print("Query the warehouse: imgpipeline query \"SELECT class_name, count(*) FROM detections GROUP BY 1\"")
    print("Stop everything with: imgpipeline services down")
    return 0


def build_warehouse(records: dict, services, resources) -> list[str]:
    """Single-run backfills of the hourly tables and the daily summary the records touch,
    recorded in the demo's Dagster instance so the UI shows them."""
    import dagster as dg

    from imgpipeline.defs.alerts.assets import alerts
    from imgpipeline.defs.hours import hour_key
    from imgpipeline.defs.reports.assets import daily_report
    from imgpipeline.defs.tracking.assets import tracking_tables
    from imgpipeline.defs.warehouse.assets import daily_summary, hourly_tables
    from imgpipeline.lib.instance import open_instance

    hours = sorted({r.event_hour for r in records.values()})
    days = sorted({h.strftime("%Y-%m-%d") for h in hours})
    instance = open_instance(services.dagster.dagster_home)
    for assets, first, last in ((hourly_tables, hour_key(hours[0]), hour_key(hours[-1])),
                                (tracking_tables, hour_key(hours[0]), hour_key(hours[-1])),
                                (alerts, hour_key(hours[0]), hour_key(hours[-1])),
                                (daily_summary, days[0], days[-1]), (daily_report, days[0], days[-1])):
        result = dg.materialize(
            [assets], instance=instance, resources=resources,
            # Step-by-step events are in the UI; the terminal gets warnings only.
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
        )
        checks = result.get_asset_check_evaluations()
        passed = sum(c.passed for c in checks)
        print(f"  {', '.join(k.to_user_string() for k in assets.keys)}: {first} … {last}, "
              f"checks passed {passed}/{len(checks)}")
    return days


def report_counts(con, days: list[str], zones) -> None:
    """The street video's distinct cars, people and bicycles and the crossings of its lines each way."""
    from imgpipeline.defs.tables.views import COUNTS_SQL

    rows = [row for day in days
            for row in con.sql(COUNTS_SQL, params=[day, zones.sha256, "street-cam"]).fetchall()]
    lines = [f"{line.name} at x = {line.start[0]:g}" for line in zones.of("street-cam").lines]
    print(f"\nstreet-cam, tracked; lines from {zones.path or '(no zones file)'}: "
          f"{', '.join(lines) or 'none'} (`in` is left to right)")
    for name in ("car", "person", "bicycle"):
        mine = [row for row in rows if row[1] == name]
        if not mine:
            continue
        _, _, unique, frames, *_ = mine[0]
        crossings = "; ".join(f"{line} {crossed_in} in, {crossed_out} out"
                              for *_, line, crossed_in, crossed_out in mine if line)
        print(f"  {name:<8} {unique} distinct {'object' if unique == 1 else 'objects'} in {frames} detections"
              + (f"; crossed {crossings}" if crossings else ""))
    print(f"  imgpipeline counts --date {days[-1]} --source street-cam   prints them again")


def report_alerts(con, days: list[str]) -> None:
    """How many alerts the rules in alerts.yaml raised, and the first few."""
    from imgpipeline.web import queries

    raised = [a for day in days for a in queries.alerts(con, datetime.fromisoformat(day).date())]
    print(f"\n{len(raised)} {'alert' if len(raised) == 1 else 'alerts'} raised (rules: alerts.yaml; each "
          "also published to the Kafka topic `alerts`):")
    for a in sorted(raised, key=lambda a: a["number"])[:8]:
        print(f"  {a['number']:>4}  {a['severity']:<8} {a['rule']:<18} {a['detail']}"
              + (f" ({a['object']})" if a["object"] else ""))
    print("  imgpipeline alerts list   lists them; imgpipeline alerts show N   shows one, with its clip "
          "when it is about the video")


def wait_for_landing(store: Storage, wanted: set[str], timeout_s: float) -> dict | None:
    """Poll the landing metadata until every wanted frame has a record; None on timeout."""
    from imgpipeline.defs.records.reader import Landing

    landing = Landing(store)
    deadline = time.monotonic() + timeout_s
    found: dict = {}
    last = -1
    while time.monotonic() < deadline:
        found = {r.frame_id: r for r in landing.records() if r.frame_id in wanted}
        if len(found) != last:
            print(f"  {len(found)}/{len(wanted)} frames landed")
            last = len(found)
        if len(found) == len(wanted):
            return found
        time.sleep(2)
    return None


def report(records: dict) -> None:
    """What the detector found in the landed frames (LandingRecords by frame id), per source."""
    statuses = Counter(r.status for r in records.values())
    detectors = Counter(f"{r.model} on {r.engine} at {r.precision}, model sha256 "
                        f"{(r.model_sha256 or '?')[:12]}…" for r in records.values())
    print(f"\nfound in {len(records)} frames ({', '.join(f'{n} {s}' for s, n in statuses.items())}) by "
          + "; ".join(detectors) + ":")
    by_source: dict[str, Counter] = {}
    for record in records.values():
        counts = by_source.setdefault(record.source_id, Counter())
        counts.update(d["class_name"] for d in record.detections)
    for source, counts in sorted(by_source.items()):
        top = ", ".join(f"{name} {n}" for name, n in counts.most_common(6))
        print(f"  {source:<11} {top}")
    bus = records.get("bus")
    if bus:
        print("  bus.jpg:    " + ", ".join(
            f"{d['class_name']} {d['confidence']:.2f}" for d in bus.detections))
