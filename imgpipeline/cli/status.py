"""`imgpipeline status`: the broker and its topics, the detect group's lag, storage, the last runs, and
per source what came in and what became of it. Exits 1 when something needs a look, saying what."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from imgpipeline import ConfigError


@dataclass
class Report:
    sections: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def status(args) -> int:
    now = datetime.now(UTC)
    report = gather(now, args.minutes)
    if args.json:
        print(json.dumps({"at": now.isoformat(), "window_min": args.minutes, **report.sections,
                          "problems": report.problems}, indent=2, default=str))
    else:
        print_report(report, now, args.minutes)
    return 1 if report.problems else 0


def gather(now: datetime, minutes: float) -> Report:
    """Every section, as the configured settings find the parts, the sources' figures over the last
    `minutes`; what needs a look in its problems."""
    from imgpipeline.defs.streaming.health import SourcePolicy
    from imgpipeline.resources import KafkaResource, StorageResource

    if not minutes > 0:
        raise ConfigError(f"--minutes {minutes:g}: the window must be longer than 0 minutes")
    report = Report()
    # A broker that is down is said within seconds, not after a client's default minute.
    kafka = KafkaResource.from_env().model_copy(update={"connect_timeout_s": 3.0})
    report.sections["broker"] = broker_section(kafka, report)
    storage = StorageResource.from_env()
    report.sections["storage"] = storage_section(storage, report)
    report.sections["runs"] = runs_section(now, report)
    if report.sections["storage"].get("reachable"):
        try:
            report.sections["sources"] = sources_section(
                storage, now, timedelta(minutes=minutes), SourcePolicy.from_env().silent_after_min, report)
        except Exception as exc:  # the store failing between two reads: said, the rest still reported
            report.problems.append(f"sources: cannot read the landing of {storage.uri}: "
                                   f"{type(exc).__name__}: {str(exc)[:300]}")
        try:
            report.sections["alerts"] = alerts_section(storage, now)
        except Exception as exc:
            report.problems.append(f"alerts: cannot read the alerts tables of {storage.uri}: "
                                   f"{type(exc).__name__}: {str(exc)[:300]}")
    return report


def broker_section(kafka, report: Report) -> dict:
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    section = {"address": kafka.bootstrap_servers, "reachable": False}
    try:
        consumer = kafka.consumer()
    except ConfigError as exc:
        report.problems.append(f"broker: {exc}")
        section["error"] = str(exc)
        return section
    try:
        section["reachable"] = True
        topics = {}
        for name in (kafka.frames_topic, kafka.dlq_topic, kafka.alerts_topic, f"{kafka.alerts_topic}.dlq"):
            ids = consumer.partitions_for_topic(name)
            if not ids:
                topics[name] = None
                if name == kafka.frames_topic:
                    report.problems.append(f"topic {name} does not exist (imgpipeline services up, or "
                                           "the first producer, creates it)")
                continue
            tps = [TopicPartition(name, p) for p in sorted(ids)]
            ends, beginnings = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
            topic = {"partitions": len(tps), "messages": sum(ends[tp] - beginnings[tp] for tp in tps)}
            if name == kafka.frames_topic:
                topic["lag"] = {}
                for tp in tps:
                    committed = consumer.committed(tp)
                    topic["lag"][tp.partition] = ends[tp] - (committed if committed is not None
                                                             else beginnings[tp])
            topics[name] = topic
        section["topics"] = topics
    except KafkaError as exc:
        report.problems.append(f"broker: {type(exc).__name__}: {exc}")
        section["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        consumer.close()
    return section


def storage_section(storage, report: Report) -> dict:
    section = {"uri": storage.uri, "reachable": False}
    try:
        store = storage.open()
        store.list("landing/sources/")
        section["reachable"] = True
    except Exception as exc:  # any failure to list is what this line reports
        report.problems.append(f"storage {storage.uri}: {type(exc).__name__}: {str(exc)[:300]}")
        section["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return section


def runs_section(now: datetime, report: Report, last: int = 8) -> dict:
    import dagster as dg

    from imgpipeline.lib.instance import InstanceSettings, open_instance
    from imgpipeline.paths import state_dir
    from imgpipeline.services.dagster_dev import dagster_home

    home = state_dir() / "dagster"
    settings = InstanceSettings.from_env()
    if settings.kind == "sqlite" and not (home / "storage").exists() and not (home / "history").exists():
        return {"instance": None}
    where = str(home) if settings.kind == "sqlite" else settings.shown_url()
    try:
        with open_instance(dagster_home(state_dir())) as instance:
            records = instance.get_run_records(limit=last)
            day_ago = now - timedelta(days=1)
            failed = instance.get_run_records(dg.RunsFilter(
                statuses=[dg.DagsterRunStatus.FAILURE], created_after=day_ago))
            lane = fast_lane(instance)
    except Exception as exc:  # the instance's database down: said, and the rest still reported
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        report.problems.append(f"instance: cannot read runs from {where}: {reason}")
        return {"instance": where, "reachable": False, "last": [], "failed_24h": 0}
    runs = [{"job": r.dagster_run.job_name, "status": r.dagster_run.status.value,
             "created": r.create_timestamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
             "seconds": round(r.end_time - r.start_time, 1) if r.start_time and r.end_time else None,
             "run_id": r.dagster_run.run_id[:8]} for r in records]
    if failed:
        latest = failed[0].dagster_run
        report.problems.append(f"{len(failed)} runs failed in the last 24 h (latest: {latest.job_name} "
                               f"{latest.run_id[:8]}; `dagster run list` or the UI's Runs page)")
    return {"instance": where, "reachable": True, "last": runs, "failed_24h": len(failed), "fast_lane": lane}


def fast_lane(instance) -> list[dict]:
    """The fast lane's follow_frames runs in flight, else its latest one: each one's status and how far it
    accounted for the partitions it held; none when the fast lane never ran here."""
    import dagster as dg

    from imgpipeline.defs.records.runs import ACTIVE
    from imgpipeline.defs.streaming.follow import follow_frames
    from imgpipeline.defs.streaming.follower import POSITIONS_TAG

    records = (instance.get_run_records(dg.RunsFilter(job_name=follow_frames.name, statuses=ACTIVE))
               or instance.get_run_records(dg.RunsFilter(job_name=follow_frames.name), limit=1))
    lanes = []
    for record in records:
        try:
            positions = json.loads(record.dagster_run.tags.get(POSITIONS_TAG, "{}")).get("positions", {})
        except (ValueError, AttributeError):
            positions = {}
        lanes.append({"run_id": record.dagster_run.run_id[:8], "status": record.dagster_run.status.value,
                      "created": record.create_timestamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                      "positions": positions})
    return lanes


def sources_section(storage, now: datetime, window: timedelta, silent_min: float, report: Report) -> dict:
    from imgpipeline.defs.partitions import Calendar
    from imgpipeline.defs.records.record import OUT_OF_RANGE
    from imgpipeline.defs.streaming.health import SourcePolicy, silent_sources, source_activity
    from imgpipeline.resources.settings import env_name

    activity = source_activity(storage.open(), now, window)
    minutes = window.total_seconds() / 60
    silent = silent_sources(activity, now, silent_min)
    variable = env_name(SourcePolicy, "silent_after_min")
    for name, gap in sorted(silent.items()):
        report.problems.append(f"source {name} silent for {gap:g} min (over {silent_min:g}; {variable}). "
                               f"Retired for good? delete landing/sources/{name}.json")
    limit = env_name(Calendar, "future_limit_min")
    for a in activity:
        if count := a.statuses[OUT_OF_RANGE]:
            report.problems.append(
                f"source {a.source_id}: {count} frames in the last {minutes:g} min captured before the "
                f"partitions' start, over {limit} ahead of the broker or in a day whose landing retention "
                f"deleted (status {OUT_OF_RANGE}, not detected): is its clock right?")
    return {a.source_id: {
        "in_per_min": round(a.came_in / minutes, 2),
        "processed_per_min": round(a.processed / minutes, 2),
        "last_frame": a.last.get("ingested_at"),
        "last_captured": a.last.get("captured_at"),
        "dark_share": round(a.share("skipped_dark"), 3),
        "error_share": round(a.share("error"), 3),
        "shed_share": round(a.share("shed"), 3),
        # broker → processed, of the frames processed in the window
        "wait_p50_s": _seconds(a.wait(0.5)), "wait_p95_s": _seconds(a.wait(0.95)),
        "out_of_range": a.statuses[OUT_OF_RANGE],
        "silent": a.source_id in silent,
    } for a in activity}


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def alerts_section(storage, now: datetime) -> dict:
    """The alerts raised in the last 24 hours, per rule: from the alerts tables of those hours."""
    from imgpipeline.defs.tables import ALERTS

    hour = now.replace(minute=0, second=0, microsecond=0)
    hours = [hour - timedelta(hours=h) for h in range(24, -1, -1)]
    fired = ALERTS.stored_hours(storage.open(), hours, ["fired_at", "rule"]).to_pylist()
    since = now - timedelta(hours=24)
    per_rule: dict[str, int] = {}
    for row in fired:
        if row["fired_at"] is not None and row["fired_at"] >= since:
            per_rule[row["rule"]] = per_rule.get(row["rule"], 0) + 1
    return {"last_24h": dict(sorted(per_rule.items()))}


def print_runs(runs: dict) -> None:
    if runs.get("instance") is None:
        print("runs     no Dagster instance here yet (`imgpipeline dev` or `imgpipeline demo` makes one)")
    elif not runs["reachable"]:
        print(f"runs     instance {runs['instance']}: UNREACHABLE")
    else:
        print(f"runs     instance {runs['instance']}; {runs['failed_24h']} failed in the last 24 h; "
              f"the last {len(runs['last'])}:")
        for run in runs["last"]:
            took = f"{run['seconds']:>7.1f} s" if run["seconds"] is not None else "        "
            print(f"  {run['created']}  {run['job']:<24} {run['status']:<10} {took}  {run['run_id']}")
        for lane in runs.get("fast_lane") or []:
            at = ", ".join(f"{p}: {o}" for p, o in lane["positions"].items()) or "no range yet"
            print(f"  fast lane: follow_frames {lane['run_id']} {lane['status']} since {lane['created']}; "
                  f"accounted up to offset {at} (by partition)")


def print_report(report: Report, now: datetime, minutes: float) -> None:
    print(f"imgpipeline status at {now:%Y-%m-%d %H:%M:%S} UTC")
    broker = report.sections["broker"]
    if broker["reachable"]:
        print(f"broker   {broker['address']}: reachable")
        for name, topic in broker.get("topics", {}).items():
            if topic is None:
                print(f"  topic {name:<22} missing")
                continue
            count = topic["partitions"]
            line = (f"  topic {name:<22} {count} partition{'s' if count > 1 else ''}, "
                    f"{topic['messages']} messages")
            if "lag" in topic:
                per = ", ".join(f"{p}: {lag}" for p, lag in topic["lag"].items())
                line += f"; lag {sum(topic['lag'].values())} (by partition {per})"
            print(line)
    else:
        print(f"broker   {broker['address']}: UNREACHABLE")
    storage = report.sections["storage"]
    print(f"storage  {storage['uri']}: {'reachable' if storage['reachable'] else 'UNREACHABLE'}")
    print_runs(report.sections["runs"])
    sources = report.sections.get("sources")
    if sources is not None:
        print(f"sources  {len(sources)} known; the last {minutes:g} min:")
        if sources:
            print(f"  {'source':<24} {'in/min':>7} {'done/min':>8}  {'last frame (broker time)':<24} "
                  f"{'dark':>5} {'error':>5} {'shed':>5} {'out of range':>12} {'wait p50/p95':>13}")
        for name, s in sources.items():
            last = (s["last_frame"] or "never")[:19].replace("T", " ")
            flag = "  SILENT" if s["silent"] else ""
            waits = (f"{s['wait_p50_s']:.1f}/{s['wait_p95_s']:.1f} s" if s["wait_p50_s"] is not None
                     else "-")
            print(f"  {name:<24} {s['in_per_min']:>7.1f} {s['processed_per_min']:>8.1f}  {last:<24} "
                  f"{s['dark_share']:>5.0%} {s['error_share']:>5.0%} {s['shed_share']:>5.0%} "
                  f"{s['out_of_range']:>12} {waits:>13}{flag}")
    if (alerts := report.sections.get("alerts")) is not None:
        raised = alerts["last_24h"]
        print(f"alerts   {sum(raised.values())} in the last 24 h" + (": " + ", ".join(
            f"{rule} {count}" for rule, count in raised.items()) if raised else ""))
    if report.problems:
        count = len(report.problems)
        print(f"{count} problem{'s' if count > 1 else ''}:")
        for problem in report.problems:
            print(f"  - {problem}")
    else:
        print("healthy")
