"""History as a laboratory: a model's detections of past hours, the alerts a rules file would have
raised over them (a backtest: no alert numbers taken, nobody notified), and two models compared.

A model's detections of an hour are its re-detections where they were made (`redetect.py`), else the
live detections when that model made them; an hour with neither is reported as lacking. An hour
re-detected with frames it could not read is partial, and one re-detected before more of its frames were
detected (its landing still growing, or late frames since) is stale: both are named, with the command that
makes them whole, and left out as lacking hours are, so that one model never seems to miss what it was
never shown.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from imgpipeline.defs.alerts import rows as at
from imgpipeline.defs.laboratory.redetect import SOURCES, frames_done, part_key
from imgpipeline.defs.tables import DETECTIONS, FRAMES, REDETECTIONS, TRACKED_COLUMNS
from imgpipeline.resources.storage import Storage
from imgpipeline.vision import events
from imgpipeline.vision.evaluator import evaluate

TRACKED = pa.schema([DETECTIONS.schema.field(name) for name in TRACKED_COLUMNS])
# Events kept as evidence per rule and day, and boxes per class one model found and the other missed.
SAMPLES = 3


@dataclass
class ModelHours:
    """A model's detections over hours: the hours it covers (all their detected frames' sources) and
    those it lacks (frames were detected, but not by it, or not for every source asked for)."""

    model: str
    detections: pa.Table  # the tracked columns (TRACKED_COLUMNS) of the hours it covers
    covered: list[datetime] = field(default_factory=list)
    lacking: list[datetime] = field(default_factory=list)
    live: list[datetime] = field(default_factory=list)  # hours whose live detections are the model's
    partial: list[datetime] = field(default_factory=list)  # re-detected with frames it could not read
    stale: list[datetime] = field(default_factory=list)  # re-detected before more frames were detected


def model_hours(store: Storage, hours: list[datetime], model: str,
                sources: list[str] | None = None) -> ModelHours:
    """The model's detections over the hours (of `sources` only, when given): re-detected, else live
    when the live rows are its own. An hour no frame of which was detected is neither covered nor
    lacking: there is nothing to find in it."""
    found = ModelHours(model, DETECTIONS.empty(TRACKED_COLUMNS))
    tables = []
    for hour in hours:
        per_source, models = detected_frames(store, hour, sources)
        if not per_source:
            continue
        if store.exists(key := part_key(hour, model)):
            table = REDETECTIONS.read(store, key, TRACKED_COLUMNS)
            only = (table.schema.metadata or {}).get(SOURCES, b"").decode()
            if only and not set(per_source) <= set(only.split(",")):
                found.lacking.append(hour)  # re-detected for some of its sources only
            elif (whole := redetected_whole(table, per_source)) != "whole":
                getattr(found, whole).append(hour)
            else:
                tables.append(table.replace_schema_metadata(None).cast(TRACKED))
                found.covered.append(hour)
        elif all(m and m.rsplit("-", 1)[0] == model for m in models):
            tables.append(DETECTIONS.stored_hour(store, hour, TRACKED_COLUMNS).replace_schema_metadata(None))
            found.covered.append(hour)
            found.live.append(hour)
        else:
            found.lacking.append(hour)
    found.detections = _of_sources(pa.concat_tables(tables), sources) if tables else found.detections
    return found


def detected_frames(store: Storage, hour: datetime, sources: list[str] | None) -> tuple[Counter, set]:
    """The hour's detected frames (of `sources` only, when given): how many per source, and the models
    that detected them (counted by Arrow: an hour's frames never become Python rows)."""
    import pyarrow.compute as pc

    frames = FRAMES.stored_hour(store, hour, ["model", "source_id", "status"])
    detected = frames.filter(pc.equal(frames.column("status"), "detected"))
    if sources:
        detected = detected.filter(pc.is_in(detected.column("source_id"), pa.array(sources)))
    counted = detected.group_by("source_id").aggregate([("status", "count")])
    per_source = Counter(dict(zip(counted.column("source_id").to_pylist(),
                                  counted.column("status_count").to_pylist(), strict=True)))
    return per_source, set(pc.unique(detected.column("model")).to_pylist())


def redetected_whole(table: pa.Table, detected: Counter) -> str:
    """`whole` when a re-detections file read every frame of its sources that the hour's `frames` now
    holds as detected (`detected`: frames per source); `partial` when it left frames unread, `stale` when
    the hour has more detected frames of a source than it re-detected. A file that records no counts
    (made by an earlier version) is taken as whole."""
    done = frames_done(table)
    if done is None:
        return "whole"
    if any(done.get(source, [0, 0])[1] for source in detected):
        return "partial"
    return "stale" if any(n > done.get(source, [0, 0])[0] for source, n in detected.items()) else "whole"


def _of_sources(table: pa.Table, sources: list[str] | None) -> pa.Table:
    import pyarrow.compute as pc

    return table.filter(pc.is_in(table.column("source_id"), pa.array(sources))) if sources else table


def fired(store: Storage, hours: list[datetime], detections: pa.Table, rules, zones,
          sources: list[str] | None = None) -> list[events.Event]:
    """The alerts the rules would raise in the hours from these detections (and the stored frames; of
    `sources` only, when given), each hour with the hour before as history, as the alerts asset
    evaluates them."""
    found = []
    for hour in hours:
        frames = _of_sources(FRAMES.stored_hours(store, at.around(hour), at.FRAME_COLUMNS), sources)
        near = _within(detections, at.around(hour))
        found += evaluate(rules, at.event_frames(frames, near), zones, hour.timestamp(),
                                 hour.timestamp() + 3600)
    return found


def _within(detections: pa.Table, hours: list[datetime]) -> pa.Table:
    """The detections captured in the hours (consecutive)."""
    import pyarrow.compute as pc

    column = detections.column("captured_at")
    start, end = (pa.scalar(moment, column.type) for moment in (hours[0], hours[-1] + timedelta(hours=1)))
    return detections.filter(pc.and_(pc.greater_equal(column, start), pc.less(column, end)))


def backtest(store: Storage, hours: list[datetime], rules, zones, detections: pa.Table,
             sources: list[str] | None = None) -> dict:
    """Per rule and day of the hours (none left out): how many alerts the rules would have raised, and
    the first few of each as evidence."""
    names = [rule.name for rule in rules.spec.rules]
    days: dict[tuple[str, str], list[events.Event]] = {
        (rule, day): [] for rule in names for day in sorted({h.date().isoformat() for h in hours})}
    for event in fired(store, hours, detections, rules, zones, sources):
        day = datetime.fromtimestamp(event.seconds, hours[0].tzinfo).date().isoformat()
        days[event.rule, day].append(event)
    return {
        "rules": names,
        "counts": [{"rule": rule, "day": day, "alerts": len(found)}
                   for (rule, day), found in sorted(days.items())],
        "evidence": [{"rule": e.rule, "day": day, "source_id": e.source_id, "frame_id": e.frame_id,
                      "at": datetime.fromtimestamp(e.seconds, hours[0].tzinfo).isoformat(),
                      "detail": e.detail}
                     for (_, day), found in sorted(days.items()) for e in found[:SAMPLES]],
    }


def iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0, width) * max(0, height)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


def matched(a: list[dict], b: list[dict], threshold: float = 0.5) -> tuple[int, list[dict], list[dict]]:
    """One frame's boxes of one class under two models, paired greedily, the most overlapping pair first
    (of equal overlaps, the most confident): how many pair up, and those of each left without a
    partner."""
    pairs = sorted((-iou(_box(x), _box(y)), -x["confidence"], -y["confidence"], i, j)
                   for i, x in enumerate(a) for j, y in enumerate(b))
    used_a, used_b = set(), set()
    for overlap, _, _, i, j in pairs:
        overlap = -overlap
        if overlap < threshold:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    return (len(used_a), [x for i, x in enumerate(a) if i not in used_a],
            [y for j, y in enumerate(b) if j not in used_b])


def _box(row: dict) -> tuple:
    return row["x"], row["y"], row["w"], row["h"]


# Rows of one frame and class paired at a time: a comparison's memory is the day's columns, its sort
# (spilled by DuckDB past its limit) and one batch of rows, whatever the day holds.
BATCH_ROWS = 20_000
MEMORY_LIMIT = "128MB"  # DuckDB's, for a comparison's counting and sorting


def compare(a: ModelHours, b: ModelHours) -> dict:
    """Over the hours both models cover: per class and hour, each model's objects and distinct objects;
    per class, the boxes they share (IoU ≥ 0.5, same frame and class) and those only one found, with
    the first few of each as samples. Counted by DuckDB over the detections' columns; only the boxes of
    one batch of frames are ever Python objects."""
    import tempfile

    hours = sorted(set(a.covered) & set(b.covered))
    with tempfile.TemporaryDirectory(prefix="imgpipeline-compare-") as spill:
        return _compared(a, b, hours, spill)


def _compared(a: ModelHours, b: ModelHours, hours: list[datetime], spill: str) -> dict:
    import duckdb

    con = duckdb.connect()
    # What a sort holds past the limit goes to `spill` (an in-memory database would spill into `.tmp` of
    # the working folder).
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'; SET threads = 1; SET temp_directory = ?", [spill])
    con.register("a", a.detections)
    con.register("b", b.detections)
    con.execute("CREATE TEMP TABLE hours (hour BIGINT)")
    if hours:
        con.executemany("INSERT INTO hours VALUES (?)", [[int(h.timestamp()) // 3600] for h in hours])
    con.execute("""CREATE TEMP VIEW rows AS SELECT * FROM (
                       SELECT 0 AS side, * FROM a UNION ALL SELECT 1 AS side, * FROM b)
                   WHERE epoch_ms(captured_at) // 3600000 IN (SELECT hour FROM hours)""")
    per_hour = con.execute("""
        SELECT epoch_ms(captured_at) // 3600000 AS hour, class_name,
               count(*) FILTER (side = 0), count(*) FILTER (side = 1),
               count(DISTINCT (source_id, track_id)) FILTER (side = 0 AND track_id IS NOT NULL),
               count(DISTINCT (source_id, track_id)) FILTER (side = 1 AND track_id IS NOT NULL)
        FROM rows GROUP BY ALL ORDER BY hour, class_name""").fetchall()
    classes, missed = _paired(con)
    return {
        "models": [a.model, b.model],
        "hours": [{"hour": datetime.fromtimestamp(hour * 3600, UTC).isoformat(), "class_name": name,
                   "objects": [n_a, n_b], "distinct": [d_a, d_b]}
                  for hour, name, n_a, n_b, d_a, d_b in per_hour],
        "classes": [{"class_name": name, "matched": n["matched"], "only": [n["only_a"], n["only_b"]],
                     "samples": [missed[name][0], missed[name][1]]}
                    for name, n in sorted(classes.items())],
        "compared": [h.isoformat() for h in hours],
        **{what: [[h.isoformat() for h in getattr(a, what)], [h.isoformat() for h in getattr(b, what)]]
           for what in WANTING},
        "left_out": left_out(a) + left_out(b),
    }


def _paired(con) -> tuple[dict[str, Counter], dict[str, list[list]]]:
    """Per class: the boxes of one frame that pair up between the models and those left over, and the
    first few left over of each model, frame by frame in order (streamed from DuckDB in batches)."""
    classes: dict[str, Counter] = defaultdict(Counter)
    missed: dict[str, list[list]] = defaultdict(lambda: [[], []])
    ordered = con.execute("""SELECT side, source_id, frame_id, class_name, confidence, x, y, w, h FROM rows
                             ORDER BY source_id, frame_id, class_name, side, detection_index""")
    key, sides = None, ([], [])

    def settle():
        both, only_a, only_b = matched(*sides)
        classes[key[2]].update({"matched": both, "only_a": len(only_a), "only_b": len(only_b)})
        for side, left in enumerate((only_a, only_b)):
            samples = missed[key[2]][side]
            samples += [_sample({**d, "source_id": key[0], "frame_id": key[1]})
                        for d in left[:SAMPLES - len(samples)]]

    for batch in ordered.fetch_record_batch(BATCH_ROWS):
        rows = zip(*batch.to_pydict().values(), strict=True)
        for side, source, frame, name, confidence, x, y, w, h in rows:
            if (source, frame, name) != key:
                if key is not None:
                    settle()
                key, sides = (source, frame, name), ([], [])
            sides[side].append({"confidence": confidence, "x": x, "y": y, "w": w, "h": h})
    if key is not None:
        settle()
    return classes, missed


def _sample(d: dict) -> dict:
    return {"source_id": d["source_id"], "frame_id": d["frame_id"], "confidence": d["confidence"],
            "box": list(_box(d))}


# Why a model's detections of hours are left out, as `model_hours` finds them.
WANTING = {
    "lacking": "with frames but no detections of {model}",
    "partial": "re-detected with {model} with frames it could not read",
    "stale": "re-detected with {model} before more of their frames were detected",
}


def left_out(found: ModelHours, within: list[datetime] | None = None) -> list[dict]:
    """The model's hours left out (of `within`, when given), each reason with the command that makes
    them whole: what the command line prints and the pages show."""
    said = []
    for what, why in WANTING.items():
        hours = [h for h in getattr(found, what) if within is None or h in within]
        if hours:
            keys = [f"{h:%Y-%m-%d-%H}:00" for h in hours]
            said.append({"model": found.model, "what": what, "text": (
                f"{len(keys)} hour{'s' if len(keys) > 1 else ''} {why.format(model=found.model)}, left out: "
                f"imgpipeline redetect --model {found.model} --from {keys[0]} --to {keys[-1]}"
                + (" (hours between that are whole already are left as they are)" if len(keys) > 1 else ""))})
    return said


def with_history(hours: list[datetime]) -> list[datetime]:
    """Every hour from the one before the first to the one after the last: rules look an hour back,
    silences an hour on."""
    found = [hours[0] - timedelta(hours=1)]
    while found[-1] <= hours[-1]:
        found.append(found[-1] + timedelta(hours=1))
    return found


def backtest_range(store: Storage, hours: list[datetime], rules, zones, model: str,
                   sources: list[str] | None = None) -> dict:
    """A rules file over a model's detections of the hours: `backtest`'s figures, the model, the rules
    file's sha256 and the hours left out (with frames but none of its detections, or partial or stale).
    A day at a time, so that a month holds one day's detections at most."""
    result: dict = {"rules": [rule.name for rule in rules.spec.rules], "counts": [], "evidence": []}
    within = ModelHours(model, DETECTIONS.empty(TRACKED_COLUMNS))
    for day in sorted({hour.date() for hour in hours}):
        day_hours = [hour for hour in hours if hour.date() == day]
        found = model_hours(store, with_history(day_hours), model, sources)
        part = backtest(store, day_hours, rules, zones, found.detections, sources)
        result["counts"] += part["counts"]
        result["evidence"] += part["evidence"]
        for what in WANTING:
            getattr(within, what).extend(h for h in getattr(found, what) if h in day_hours)
    result["counts"].sort(key=lambda c: (c["rule"], c["day"]))
    result["evidence"].sort(key=lambda e: (e["rule"], e["day"]))
    result.update(model=model, rules_sha256=rules.sha256,
                  **{what: [h.isoformat() for h in getattr(within, what)] for what in WANTING},
                  left_out=left_out(within))
    return result


def compare_hours(store: Storage, hours: list[datetime], a: str, b: str, rules, zones,
                  sources: list[str] | None = None) -> dict:
    """`compare` of two models over the hours, and the alerts the rules would raise under each."""
    result = compare(model_hours(store, hours, a, sources), model_hours(store, hours, b, sources))
    both = [hour for hour in hours if hour.isoformat() in result["compared"]]
    counted = [Counter() for _ in (a, b)]
    for side, model in zip(counted, (a, b), strict=True):
        for count in (backtest_range(store, both, rules, zones, model, sources)["counts"] if both else []):
            side[count["rule"]] += count["alerts"]
    result["alerts"] = [{"rule": rule.name, "alerts": [side[rule.name] for side in counted]}
                        for rule in rules.spec.rules]
    return result
