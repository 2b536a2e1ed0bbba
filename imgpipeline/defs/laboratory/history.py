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
from datetime import datetime, timedelta

import pyarrow as pa

from imgpipeline.defs.alerts import rows as at
from imgpipeline.defs.laboratory.redetect import SOURCES, frames_done, part_key
from imgpipeline.defs.tables import DETECTIONS, FRAMES, REDETECTIONS
from imgpipeline.vision import events

# Events kept as evidence per rule and day, and boxes per class one model found and the other missed.
SAMPLES = 3


@dataclass
class ModelHours:
    """A model's detections over hours: the hours it covers (all their detected frames' sources) and
    those it lacks (frames were detected, but not by it, or not for every source asked for)."""

    model: str
    detections: pa.Table
    covered: list[datetime] = field(default_factory=list)
    lacking: list[datetime] = field(default_factory=list)
    live: list[datetime] = field(default_factory=list)  # hours whose live detections are the model's
    partial: list[datetime] = field(default_factory=list)  # re-detected with frames it could not read
    stale: list[datetime] = field(default_factory=list)  # re-detected before more frames were detected


def model_hours(store, hours: list[datetime], model: str, sources: list[str] | None = None) -> ModelHours:
    """The model's detections over the hours (of `sources` only, when given): re-detected, else live
    when the live rows are its own. An hour no frame of which was detected is neither covered nor
    lacking: there is nothing to find in it."""
    found = ModelHours(model, DETECTIONS.empty())
    tables = []
    for hour in hours:
        frames = FRAMES.stored_hour(store, hour)
        detected = [(m, s) for m, s, status in zip(frames.column("model").to_pylist(),
                                                   frames.column("source_id").to_pylist(),
                                                   frames.column("status").to_pylist(), strict=True)
                    if status == "detected" and (not sources or s in sources)]
        if not detected:
            continue
        if store.exists(key := part_key(hour, model)):
            table = REDETECTIONS.read(store, key)
            only = (table.schema.metadata or {}).get(SOURCES, b"").decode()
            if only and not {s for _, s in detected} <= set(only.split(",")):
                found.lacking.append(hour)  # re-detected for some of its sources only
            elif (whole := redetected_whole(table, Counter(s for _, s in detected))) != "whole":
                getattr(found, whole).append(hour)
            else:
                tables.append(table.replace_schema_metadata(None).cast(DETECTIONS.schema))
                found.covered.append(hour)
        elif all(m and m.rsplit("-", 1)[0] == model for m, _ in detected):
            tables.append(DETECTIONS.stored_hour(store, hour).replace_schema_metadata(None))
            found.covered.append(hour)
            found.live.append(hour)
        else:
            found.lacking.append(hour)
    found.detections = _of_sources(DETECTIONS.concat(tables), sources) if tables else found.detections
    return found


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


def fired(store, hours: list[datetime], detections: pa.Table, rules, zones,
          sources: list[str] | None = None) -> list[events.Event]:
    """The alerts the rules would raise in the hours from these detections (and the stored frames; of
    `sources` only, when given), each hour with the hour before as history, as the alerts asset
    evaluates them."""
    found = []
    for hour in hours:
        frames = _of_sources(FRAMES.stored_hours(store, at.around(hour), at.FRAME_COLUMNS), sources)
        near = _within(detections, at.around(hour))
        found += events.evaluate(rules, at.event_frames(frames, near), zones, hour.timestamp(),
                                 hour.timestamp() + 3600)
    return found


def _within(detections: pa.Table, hours: list[datetime]) -> pa.Table:
    """The detections captured in the hours (consecutive)."""
    import pyarrow.compute as pc

    column = detections.column("captured_at")
    start, end = (pa.scalar(moment, column.type) for moment in (hours[0], hours[-1] + timedelta(hours=1)))
    return detections.filter(pc.and_(pc.greater_equal(column, start), pc.less(column, end)))


def backtest(store, hours: list[datetime], rules, zones, detections: pa.Table,
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


def compare(a: ModelHours, b: ModelHours) -> dict:
    """Over the hours both models cover: per class and hour, each model's objects and distinct objects;
    per class, the boxes they share (IoU ≥ 0.5, same frame and class) and those only one found, with
    the first few of each as samples."""
    hours = set(a.covered) & set(b.covered)
    rows: dict[str, list] = {"a": [], "b": []}
    for side, found in (("a", a), ("b", b)):
        for d in found.detections.to_pylist():
            if d["captured_at"].replace(minute=0, second=0, microsecond=0) in hours:
                rows[side].append(d)
    per_hour: dict[tuple, Counter] = defaultdict(Counter)
    tracks: dict[tuple, set] = defaultdict(set)
    frames: dict[tuple, dict[str, list]] = defaultdict(lambda: {"a": [], "b": []})
    for side, found in rows.items():
        for d in found:
            hour = d["captured_at"].replace(minute=0, second=0, microsecond=0)
            per_hour[hour, d["class_name"]][side] += 1
            if d["track_id"] is not None:
                tracks[hour, d["class_name"], side].add((d["source_id"], d["track_id"]))
            frames[d["source_id"], d["frame_id"], d["class_name"]][side].append(d)
    classes: dict[str, Counter] = defaultdict(Counter)
    missed: dict[str, dict[str, list]] = defaultdict(lambda: {"a": [], "b": []})
    for (_, _, name), sides in sorted(frames.items()):
        both, only_a, only_b = matched(sides["a"], sides["b"])
        classes[name].update({"matched": both, "only_a": len(only_a), "only_b": len(only_b)})
        for side, left in (("a", only_a), ("b", only_b)):
            missed[name][side] += [_sample(d) for d in left][:SAMPLES - len(missed[name][side])]
    return {
        "models": [a.model, b.model],
        "hours": [{"hour": hour.isoformat(), "class_name": name, "objects": [n["a"], n["b"]],
                   "distinct": [len(tracks[hour, name, "a"]), len(tracks[hour, name, "b"])]}
                  for (hour, name), n in sorted(per_hour.items())],
        "classes": [{"class_name": name, "matched": n["matched"], "only": [n["only_a"], n["only_b"]],
                     "samples": [missed[name]["a"], missed[name]["b"]]}
                    for name, n in sorted(classes.items())],
        "compared": [h.isoformat() for h in sorted(hours)],
        "lacking": [[h.isoformat() for h in a.lacking], [h.isoformat() for h in b.lacking]],
        "partial": [[h.isoformat() for h in a.partial], [h.isoformat() for h in b.partial]],
        "stale": [[h.isoformat() for h in a.stale], [h.isoformat() for h in b.stale]],
    }


def _sample(d: dict) -> dict:
    return {"source_id": d["source_id"], "frame_id": d["frame_id"], "confidence": d["confidence"],
            "box": list(_box(d))}


# Why a model's detections of hours are left out, as `model_hours` finds them.
WANTING = {
    "lacking": "with frames but no detections of {model}",
    "partial": "re-detected with {model} with frames it could not read",
    "stale": "re-detected with {model} before more of their frames were detected",
}


def wanting_text(model: str, hours: list[str], what: str = "lacking") -> str:
    """Which hours (ISO times) lack the model's detections, or have them partial or stale, and the
    command that makes them whole."""
    keys = [f"{hour[:10]}-{hour[11:13]}:00" for hour in hours]  # ISO times to partition keys
    return (f"{len(keys)} hour{'s' if len(keys) > 1 else ''} {WANTING[what].format(model=model)}, left out: "
            f"imgpipeline redetect --model {model} --from {keys[0]} --to {keys[-1]}"
            + (" (hours between that are whole already are left as they are)" if len(keys) > 1 else ""))


def with_history(hours: list[datetime]) -> list[datetime]:
    """Every hour from the one before the first to the one after the last: rules look an hour back,
    silences an hour on."""
    found = [hours[0] - timedelta(hours=1)]
    while found[-1] <= hours[-1]:
        found.append(found[-1] + timedelta(hours=1))
    return found


def backtest_range(store, hours: list[datetime], rules, zones, model: str,
                   sources: list[str] | None = None) -> dict:
    """A rules file over a model's detections of the hours: `backtest`'s figures, the model, the rules
    file's sha256 and the hours with frames but none of its detections."""
    found = model_hours(store, with_history(hours), model, sources)
    result = backtest(store, hours, rules, zones, found.detections, sources)
    result.update(model=model, rules_sha256=rules.sha256,
                  **{what: [h.isoformat() for h in getattr(found, what) if h in hours]
                     for what in ("lacking", "partial", "stale")})
    return result


def compare_hours(store, hours: list[datetime], a: str, b: str, rules, zones,
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
