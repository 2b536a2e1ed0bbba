"""Pages and the daily report from the same templates and charts: what a day looks like, its alerts,
frames, the earlier pipelines' charts and the operations figures."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime

import jinja2

from imgpipeline.vision.quality import DARK_THRESHOLD
from imgpipeline.web import charts, queries

ENV = jinja2.Environment(loader=jinja2.PackageLoader("imgpipeline.web", "templates"),
                         autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined)
HOURS = [f"{h:02d}" for h in range(24)]



def report_key(day: date) -> str:
    """Where a day's report is stored (daily_report writes it, the viewer serves it at /reports/<day>)."""
    return f"reports/daily/{day.isoformat()}.html"


def render(template: str, **context) -> str:
    return ENV.get_template(template).render(**context)


def day_context(con, day: date, zones_sha256: str | None) -> dict:
    """Per source: the day's totals, a chart of each hour's objects per class (distinct objects where
    tracking has run, detections otherwise) and the line crossings."""
    counts = queries.hourly_counts(con, day)
    totals = queries.class_totals(con, day)
    crossings = queries.hourly_crossings(con, day, zones_sha256)
    per_source = []
    for total in queries.day_totals(con, day):
        source = total["source_id"]
        mine = [r for r in counts if r["source_id"] == source]
        tracked = any(r["unique_objects"] for r in mine)
        measure = "unique_objects" if tracked else "detections"
        series: dict[str, list[float]] = defaultdict(lambda: [0] * 24)
        for row in mine:
            series[row["class_name"]][row["hour"]] = row[measure]
        ordered = dict(sorted(series.items(), key=lambda kv: -sum(kv[1])))
        what = "distinct objects" if tracked else "objects"
        # A source with no track that day sent photos, not a sequence: each detection is an object.
        classes = [{**r, "objects": r["unique_objects"] if tracked else r["detections"]}
                   for r in totals if r["source_id"] == source]
        per_source.append({
            **total, "tracked": tracked, "kind": "sequence" if tracked else "photos",
            "chart": charts.bars(f"{source}: {what} per hour (UTC)", HOURS, ordered),
            "classes": classes,
            "crossings": [r for r in crossings if r["source_id"] == source],
        })
    return {"day": day, "sources": per_source}


def charts_context(con, day: date) -> dict:
    sizes = queries.image_sizes(con, day)
    processed = queries.processing_hours(con, day)
    statuses = sorted({r["status"] for r in processed})
    by_status = {s: [0] * 24 for s in statuses}
    for row in processed:
        by_status[row["status"]][row["hour"]] = row["frames"]
    light = queries.brightness(con, day)
    series: dict[str, list] = defaultdict(list)
    for row in light:
        series[row["source_id"]].append((row["seconds"], row["brightness"]))
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    return {
        "day": day,
        "sizes": charts.histogram("Image sizes (KB)", [b / 1024 for b in sizes["bytes"]], 20),
        "dimensions": sizes["dimensions"],
        "hours": charts.bars("Frames processed per hour of the day (UTC), by status", HOURS, by_status),
        "brightness": charts.lines("Brightness over the day (mean 0–255) per source", dict(series),
                                   (start, start + 86400), _hour_marks(start),
                                   (DARK_THRESHOLD, f"dark filter: {DARK_THRESHOLD:g}")),
    }


def operations_context(con, day: date) -> dict:
    figures = queries.operations(con, day)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    minute = figures["per_minute"]
    per_hour = figures["per_hour"]
    problems = {"errors (dead-lettered)": [0] * 24, "dark": [0] * 24, "shed": [0] * 24}
    for row in per_hour:
        problems["errors (dead-lettered)"][row["hour"]] = row["errors"]
        problems["dark"][row["hour"]] = row["dark"]
        problems["shed"][row["hour"]] = row["shed"]
    return {
        "day": day, "per_hour": per_hour,
        "flow": charts.lines("Frames per minute: in (ingested) and processed", {
            "in": [(r["seconds"], r["came_in"]) for r in minute],
            "processed": [(r["seconds"], r["processed"]) for r in minute]}, *_span(minute, start)),
        "lag": charts.bars("Lag, capture to processed (s), p50 and p95 per hour", HOURS, {
            "p50": _per_hour(per_hour, "lag_p50_s"),
            "p95 − p50": [max(0.0, a - b) for a, b in zip(_per_hour(per_hour, "lag_p95_s"),
                                                          _per_hour(per_hour, "lag_p50_s"), strict=True)]}),
        "problems": charts.bars("Errors, dark and shed frames per hour", HOURS, problems,
                                none="no errors, dark or shed frames this day"),
    }


def _per_hour(rows: list[dict], column: str) -> list[float]:
    values = [0.0] * 24
    for row in rows:
        values[row["hour"]] = float(row[column] or 0)
    return values


def _hour_marks(start: float) -> list[tuple[float, str]]:
    return [(start + h * 3600, f"{h:02d}") for h in range(0, 25, 3)]


def _span(rows: list[dict], start: float) -> tuple[tuple[float, float], list[tuple[float, str]]]:
    """The day, when the minutes fall in it; else (frames ingested on another day: a backfill, a late
    camera) the minutes' own span, labelled with their times."""
    seconds = [r["seconds"] for r in rows]
    if not seconds or (start <= min(seconds) and max(seconds) < start + 86400):
        return (start, start + 86400), _hour_marks(start)
    low, high = min(seconds) - 60, max(seconds) + 60
    marks = [low + (high - low) * i / 6 for i in range(7)]
    fmt = "%H:%M" if high - low < 86400 else "%m-%d %H:%M"
    return (low, high), [(m, datetime.fromtimestamp(m, UTC).strftime(fmt)) for m in marks]


def report(con, day: date, zones_sha256: str | None, images: dict[int, str], viewer_url: str,
           clips: frozenset[int] = frozenset()) -> str:
    """The day as one self-contained HTML file: counts, charts, operations and alerts with their images
    (`images`: alert number → data: URI) and a link to the viewer's clip of those in `clips`."""
    return render("report.html", **day_context(con, day, zones_sha256),
                  charts=charts_context(con, day), ops=operations_context(con, day),
                  alerts=queries.alerts(con, day), images=images, clips=clips, viewer_url=viewer_url,
                  made_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), standalone=True)
