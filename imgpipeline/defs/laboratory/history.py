"""History as a laboratory: a model's detections of past hours, the alerts a rules file would have
raised over them (a backtest: no alert numbers taken, nobody notified), and two models compared.

A model's detections of an hour are its re-detections where they were made (`redetect.py`), else the
live detections when that model made them; an hour with neither is reported as lacking.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pyarrow as pa

from imgpipeline.defs.alerts import rows as at
from imgpipeline.defs.laboratory.redetect import part_key
from imgpipeline.defs.tables import DETECTIONS, FRAMES, REDETECTIONS
from imgpipeline.vision import events

# Events kept as evidence per rule and day, and boxes per class one model found and the other missed.
SAMPLES = 3


@dataclass
class ModelHours:
    """A model's detections over hours, and which hours it lacks."""

    model: str
    detections: pa.Table
    lacking: list[datetime] = field(default_factory=list)
    live: list[datetime] = field(default_factory=list)  # hours whose live detections are the model's


def model_hours(store, hours: list[datetime], model: str) -> ModelHours:
    """The model's detections over the hours: re-detected, else live when the live rows are its own."""
    found = ModelHours(model, DETECTIONS.empty())
    tables = []
    for hour in hours:
        if store.exists(key := part_key(hour, model)):
            tables.append(REDETECTIONS.read(store, key).cast(DETECTIONS.schema))
            continue
        frames = FRAMES.stored_hour(store, hour)
        made_by = {m for m, s in zip(frames.column("model").to_pylist(), frames.column("status").to_pylist(),
                                     strict=True) if s == "detected"}
        if made_by and all(m and m.rsplit("-", 1)[0] == model for m in made_by):
            tables.append(DETECTIONS.stored_hour(store, hour).replace_schema_metadata(None))
            found.live.append(hour)
        elif frames.num_rows:
            found.lacking.append(hour)
    found.detections = DETECTIONS.concat(tables) if tables else found.detections
    return found


def fired(store, hours: list[datetime], detections: pa.Table, rules, zones) -> list[events.Event]:
    """The alerts the rules would raise in the hours from these detections (and the stored frames),
    each hour with the hour before as history, as the alerts asset evaluates them."""
    found = []
    for hour in hours:
        frames = FRAMES.stored_hours(store, at.around(hour), at.FRAME_COLUMNS)
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


def backtest(store, hours: list[datetime], rules, zones, detections: pa.Table) -> dict:
    """Per rule and day: how many alerts the rules would have raised, and the first few as evidence."""
    days: dict[tuple[str, str], list[events.Event]] = defaultdict(list)
    for event in fired(store, hours, detections, rules, zones):
        day = datetime.fromtimestamp(event.seconds, hours[0].tzinfo).date().isoformat()
        days[event.rule, day].append(event)
    return {
        "rules": [rule.name for rule in rules.spec.rules],
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
    """One frame's boxes of one class under two models, paired greedily by IoU (the most confident
    first): how many pair up, and those of each left without a partner."""
    pairs = sorted(((iou(_box(x), _box(y)), -x["confidence"], i, j) for i, x in enumerate(a)
                    for j, y in enumerate(b)), reverse=True)
    used_a, used_b = set(), set()
    for overlap, _, i, j in pairs:
        if overlap < threshold:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    return (len(used_a), [x for i, x in enumerate(a) if i not in used_a],
            [y for j, y in enumerate(b) if j not in used_b])


def _box(row: dict) -> tuple:
    return row["x"], row["y"], row["w"], row["h"]


def compare(a: ModelHours, b: ModelHours, sources: list[str] | None = None) -> dict:
    """Per class and hour, each model's objects and distinct objects; per class, the boxes they share
    (IoU ≥ 0.5, same frame and class) and those only one found, with the first few of each as samples."""
    rows = {}
    for side, found in (("a", a), ("b", b)):
        for d in found.detections.to_pylist():
            if not sources or d["source_id"] in sources:
                rows.setdefault(side, []).append(d)
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
        "lacking": [[h.isoformat() for h in a.lacking], [h.isoformat() for h in b.lacking]],
    }


def _sample(d: dict) -> dict:
    return {"source_id": d["source_id"], "frame_id": d["frame_id"], "confidence": d["confidence"],
            "box": list(_box(d))}


def with_history(hours: list[datetime]) -> list[datetime]:
    """The hours and the one either side: rules look an hour back, silences an hour on."""
    return [hours[0] - timedelta(hours=1), *hours, hours[-1] + timedelta(hours=1)]


def backtest_range(store, hours: list[datetime], rules, zones, model: str) -> dict:
    """A rules file over a model's detections of the hours: `backtest`'s figures, the model, the rules
    file's sha256 and the hours with frames but none of its detections."""
    found = model_hours(store, with_history(hours), model)
    result = backtest(store, hours, rules, zones, found.detections)
    result.update(model=model, rules_sha256=rules.sha256,
                  lacking=[h.isoformat() for h in found.lacking if h in hours])
    return result


def compare_hours(store, hours: list[datetime], a: str, b: str, rules, zones,
                  sources: list[str] | None = None) -> dict:
    """`compare` of two models over the hours, and the alerts the rules would raise under each."""
    result = compare(model_hours(store, hours, a), model_hours(store, hours, b), sources)
    counted = [Counter() for _ in (a, b)]
    for side, model in zip(counted, (a, b), strict=True):
        for count in backtest_range(store, hours, rules, zones, model)["counts"]:
            side[count["rule"]] += count["alerts"]
    result["alerts"] = [{"rule": rule.name, "alerts": [side[rule.name] for side in counted]}
                        for rule in rules.spec.rules]
    return result
