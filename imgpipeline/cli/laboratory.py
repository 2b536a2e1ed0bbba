"""`imgpipeline compare` and `imgpipeline alerts backtest`: past hours under two models, and the alerts a
rules file would have raised over them (`imgpipeline.defs.laboratory.history`)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

from imgpipeline import ConfigError
from imgpipeline.cli.query import day_arg
from imgpipeline.cli.redetect import parse_hour


def hours_between(first: datetime, last: datetime) -> list[datetime]:
    if last < first:
        raise ConfigError(f"--to {last:%Y-%m-%d-%H:00} is before --from {first:%Y-%m-%d-%H:00}")
    if last - first > timedelta(days=92):
        raise ConfigError("a range of more than 92 days: backtest it a quarter at a time")
    hours = [first]
    while hours[-1] < last:
        hours.append(hours[-1] + timedelta(hours=1))
    return hours


def last_hour(text: str) -> datetime:
    """--to: an hour, or a day alone for its last hour."""
    moment = parse_hour(text, "--to")
    return moment + timedelta(hours=23) if len(text.strip()) == len("2026-11-20") else moment


def day_hours(day: date) -> list[datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return [start + timedelta(hours=n) for n in range(24)]


def model_name(text: str | None) -> str:
    """A model of the registry; the live model when not given."""
    from imgpipeline.resources import DetectorResource
    from imgpipeline.vision import models

    if text is None:
        return DetectorResource.from_env().model
    return models.get(text.strip().lower()).name if text.strip() else models.DEFAULT


def backtest(args) -> int:
    from pathlib import Path

    from imgpipeline.defs.laboratory import history
    from imgpipeline.resources import DetectorResource, StorageResource, TrackingResource
    from imgpipeline.vision import alert_rules, models

    rules = alert_rules.load(Path(args.rules))
    zones = TrackingResource.from_env().zones()
    model = model_name(args.model)
    spec = models.get(model, Path(DetectorResource.from_env().models_dir))
    rules.check_against(zones, spec.class_names(), str(spec.folder / spec.names))
    hours = hours_between(parse_hour(args.start, "--from"), last_hour(args.end))
    result = history.backtest_range(StorageResource.from_env().open(), hours, rules, zones, model)
    result["rules_file"] = str(args.rules)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"backtest of {args.rules} (sha256 {rules.sha256[:12]}…) over {hours[0]:%Y-%m-%d %H:00} … "
          f"{hours[-1]:%Y-%m-%d %H:00} UTC with {model}'s detections; no alert numbered, nobody notified")
    for left in result["left_out"]:
        print(f"  {left['text']}")
    print(f"  {'rule':<24}{'alerts':>7}   per day")
    for rule in result["rules"]:
        days = [c for c in result["counts"] if c["rule"] == rule]
        print(f"  {rule:<24}{sum(c['alerts'] for c in days):>7}   "
              + ", ".join(f"{c['day']}: {c['alerts']}" for c in days if c["alerts"]))
    for e in result["evidence"]:
        print(f"    {e['rule']}: {e['at']} {e['source_id']} {e['frame_id']}: {e['detail']}")
    return 0


def compare(args) -> int:
    from pathlib import Path

    from imgpipeline.defs.laboratory import history
    from imgpipeline.resources import AlertsResource, DetectorResource, StorageResource, TrackingResource
    from imgpipeline.vision import models

    if len(args.model or []) != 2:
        raise ConfigError("give two models: --model A --model B (`imgpipeline models list` shows them)")
    folder = Path(DetectorResource.from_env().models_dir)
    a, b = (models.get(m.strip().lower(), folder).name for m in args.model)
    rules, zones = AlertsResource.from_env().rules(), TrackingResource.from_env().zones()
    result = history.compare_hours(StorageResource.from_env().open(), day_hours(day_arg(args.date)), a, b,
                                   rules, zones, args.source)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print_comparison(result, args.date)
    return 0


def print_comparison(result: dict, day: str) -> None:
    a, b = result["models"]
    print(f"{day}: {a} (A) against {b} (B)")
    for left in result["left_out"]:
        print(f"  {left['text']}")
    print(f"  {'hour':<6}{'class':<16}{'objects A':>10}{'objects B':>10}{'distinct A':>11}"
          f"{'distinct B':>11}")
    for row in result["hours"]:
        print(f"  {row['hour'][11:16]:<6}{row['class_name']:<16}{row['objects'][0]:>10}"
              f"{row['objects'][1]:>10}{row['distinct'][0]:>11}{row['distinct'][1]:>11}")
    print(f"  {'class':<16}{'matched':>8}{'only A':>8}{'only B':>8}   (boxes of one frame, IoU ≥ 0.5)")
    for row in result["classes"]:
        print(f"  {row['class_name']:<16}{row['matched']:>8}{row['only'][0]:>8}{row['only'][1]:>8}")
        for side, samples in zip("AB", row["samples"], strict=True):
            for s in samples:
                print(f"      only {side}: {s['source_id']} {s['frame_id']} box {s['box']} "
                      f"({s['confidence']:.2f})")
    print(f"  {'rule':<24}{'alerts A':>9}{'alerts B':>9}   (alerts.yaml backtested; none raised)")
    for row in result["alerts"]:
        print(f"  {row['rule']:<24}{row['alerts'][0]:>9}{row['alerts'][1]:>9}")
