"""`imgpipeline alerts list|show`: the alerts the rules raised, from the warehouse (`backtest`:
`imgpipeline.cli.laboratory`)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from imgpipeline import ConfigError


def alerts(args) -> int:
    if args.what == "backtest":
        from imgpipeline.cli.laboratory import backtest

        return backtest(args)
    from imgpipeline.cli.query import warehouse
    from imgpipeline.defs.alerts.ledger import Ledger
    from imgpipeline.resources import AlertsResource, StorageResource
    from imgpipeline.web import queries

    con = warehouse()
    viewer = AlertsResource.from_env().viewer_url
    if args.what == "list":
        try:
            day = date.fromisoformat(args.date) if args.date else datetime.now(UTC).date()
        except ValueError:
            raise ConfigError(f"--date {args.date!r} is not a day (YYYY-MM-DD)") from None
        found = queries.alerts(con, day, args.source)
        if not found:
            print(f"no alerts on {day}{' from ' + args.source if args.source else ''} (alerts are made "
                  "hourly from the rules in alerts.yaml; see docs/alerts.md)")
            return 0
        print(f"{len(found)} alerts on {day}, newest first:")
        for a in found:
            print(f"  {a['number']:>6}  {a['fired_at']:%H:%M:%S}  {a['severity']:<8} {a['rule']:<22} "
                  f"{a['source_id']:<12} {a['detail']}" + (f" ({a['object']})" if a["object"] else ""))
        print(f"imgpipeline alerts show N   prints one; the viewer shows it at {viewer}/alerts/N")
        return 0
    found = queries.alert(con, args.number)
    store = StorageResource.from_env().open()
    if found is None:
        print(Ledger(store).missing(args.number))
        return 1
    found = queries.with_objects(con, [found])[0]
    deliveries = Ledger(store).deliveries(args.number)
    print(f"alert {found['number']}: {found['severity']} · {found['rule']} ({found['kind']})")
    rows = [
        ("what", found["detail"]),
        ("fired", f"{found['fired_at']:%Y-%m-%d %H:%M:%S} UTC"),
        ("source", found["source_id"]),
        ("frames", ", ".join(found["frame_ids"])),
        ("object", f"{found['object']} (track {found['track_id']})" if found["object"] else "-"),
        ("annotated", store.uri(found["annotated_key"]) if found["annotated_key"] else "-"),
        ("crop", store.uri(found["crop_key"]) if found["crop_key"] else "-"),
        ("clip", store.uri(clip) if (clip := queries.stored_clip(store, found)) else "-"),
        ("notified", "; ".join(f"{t}: {d['state']}" + (f" ({d['reason']})" if d.get("reason") else "")
                               for t, d in sorted(deliveries.items())) or "not yet"),
        ("viewer", f"{viewer}/alerts/{found['number']}"),
    ]
    for name, value in rows:
        print(f"  {name:<10} {value}")
    return 0
