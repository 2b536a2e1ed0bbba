"""Live alerts: the frame rules (class, count, dark, frozen, silent) and the track rules (line_cross,
zone_enter, dwell) raised by the fast lane as each range lands, with the numbers the hourly `alerts` asset
gives them.

For each partition an `Evaluator` (vision/evaluator, the evaluator of the hourly alerts too) keeps the
rules' state of its sources and a `TrackWatch` (vision/live_tracks) tracks them and counts their lines and
zones; after a range lands its records are tracked and counted, then fed to the evaluator, and what
fires is numbered by the alerts ledger (the same keys, so the hour finds them claimed), drawn as evidence,
published to Kafka `alerts` and the rules' webhooks (recorded as sent, so the hourly run sends none
again), and both states are saved to
`alerts/live/<topic>/<partition>[-g<N>].json` with the offset they have seen through, before the range is
accounted for. A run that goes on after another (the next follow_frames run, or one taking over a range
SIGKILLed mid-way) reads it back: frames fed already are passed over, so a range detected again fires
nothing twice. A watch whose saved state does not reach its range (the first range after the fast lane
was turned on or after a batch run, a partition whose first range lands after another's, a range whose
listener failed, rules changed) is warmed first: fed the frames of the range's sources landed since the
start of the hour before (what the hourly evaluation reads as history), whatever partition or lane
landed them, with what they fire dropped (those belong to the ranges and hours before), so it fires
from the range's first frames what the hourly alerts give them. The tracker is warmed with the last seconds
before the range only: where a source sent a frame just before those (a track of it may go on unseen),
tracks confirmed in them (objects the hourly tracker may know from before, under other ids) are left to
the hourly alerts.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime

from imgpipeline import is_camera
from imgpipeline.defs.alerts import mqtt_out, notify
from imgpipeline.defs.alerts import rows as at
from imgpipeline.defs.alerts.clips import LiveClips, make_due
from imgpipeline.defs.alerts.ledger import Ledger
from imgpipeline.defs.alerts.watches import STATE, state_key
from imgpipeline.defs.records.listeners import LandedRange
from imgpipeline.defs.records.reader import landing_keys, read_records
from imgpipeline.defs.records.record import OUT_OF_RANGE, LandingRecord
from imgpipeline.ingest.messages import parse_time
from imgpipeline.resources.storage import BadObject, Storage
from imgpipeline.vision import events
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.evaluator import HOUR, Evaluator, hour_of
from imgpipeline.vision.live_tracks import SLOWEST_RATE, TrackWatch
from imgpipeline.vision.rules import Step

RETRIES_EVERY_S = 60.0  # refused sends of other runs (the hourly, a run before) are looked for this often


def event_frames(records) -> dict[str, list[events.EventFrame]]:
    """Each source's frames in a range's records, as the rules take them (as `rows.event_frames` takes
    the same frames from the hourly tables)."""
    found: dict[str, list[events.EventFrame]] = defaultdict(list)
    for r in records:
        # A stand-in source is no camera: no rule watches it, and garbage under many keys would only grow
        # the watches (and warm them again and again).
        if r.status == OUT_OF_RANGE or not is_camera(r.source_id):
            continue
        seen = [Detection(index=i, class_name=d["class_name"], confidence=d["confidence"],
                          box=tuple(d["box"])) for i, d in enumerate(r.detections or [])]
        found[r.source_id].append(events.EventFrame(
            r.frame_id, parse_time(r.captured_at).timestamp(), r.status, r.brightness, r.sha256, r.width,
            r.height, seen))
    return dict(found)


def load_watches(store: Storage, landed: LandedRange, rules, zones, settings,
                 frames: dict[str, list[events.EventFrame]]) -> tuple[Evaluator, TrackWatch]:
    """The partition's watches as the run before left them, if it saw through this range's start; else
    new ones warmed with what was landed before the range (`warmed`)."""
    key = state_key(landed.topic, landed.partition, landed.generation)
    try:
        saved = json.loads(store.get(key)) if store.exists(key) else None
    except (BadObject, ValueError):
        saved = None
    watch = tracks = None
    if isinstance(saved, dict) and isinstance(saved.get("through"), int) and saved["through"] >= landed.start:
        # A part damaged or missing (a state of an earlier version has no tracks) is warmed, as if none.
        watch = _restored(lambda: Evaluator.from_json(rules, json.dumps(saved["watch"]).encode()))
        tracks = _restored(lambda: TrackWatch.from_json(rules, zones, settings,
                                                        json.dumps(saved["tracks"]).encode()))
    if watch is None or tracks is None or not seen_all(watch, frames):
        # The sources it knew are warmed too: a range of other cameras next does not warm it again.
        return warmed(store, rules, zones, settings, frames, set(watch.sources) if watch else set())
    return watch, tracks


def seen_all(watch: Evaluator, frames: dict[str, list[events.EventFrame]]) -> bool:
    """Whether the watch has the history of every source of the range: it was warmed with the sources of
    the range it began at, so a source first sending since (or back after it was forgotten) has none,
    and the watch is warmed again with it."""
    return frames.keys() <= watch.sources.keys()


def warmed(store: Storage, rules, zones, settings, frames: dict[str, list[events.EventFrame]],
           known: set[str] = frozenset()) -> tuple[Evaluator, TrackWatch]:
    """New watches for a range, fed first the landed frames of its sources (and of the `known` ones, which
    the watch it replaces had) since the start of the hour before its first frame's (the history the
    hourly evaluation reads), what those fire dropped: they are the ranges' and hours' before. The
    tracker is fed only the last seconds before the range."""
    moments = [f.seconds for fs in frames.values() for f in fs]
    # A range whose frames are late by hours reads three hours at most (its older frames are left blind).
    since = max(hour_of(min(moments)), hour_of(max(moments)) - HOUR) - HOUR
    tracked_since = max(since, min(moments) - settings.replay_for(SLOWEST_RATE))
    own = {(source, f.frame_id) for source, fs in frames.items() for f in fs}
    history = event_frames(landed_history(store, set(frames) | known, own, since, hour_of(max(moments))))
    watch = Evaluator(rules, seen_since=since)
    # Each source's frames read after the last one the tracker is not fed are fed: a camera whose history
    # is all in the last seconds (a run killed in its first minute, taken over) is tracked whole, not
    # blind, whatever the partition's other cameras sent before.
    read = {source: max([since, *(f.seconds for f in history.get(source, []) if f.seconds < tracked_since)])
            for source in set(frames) | set(known) | set(history)}
    tracks = TrackWatch(rules, zones, settings, seen_since=max([since, *read.values()]), read=read)
    for source in sorted(history):
        recent = {s.frame.frame_id: s for s in tracks.feed(source, [f for f in history[source]
                                                                    if f.seconds >= tracked_since])}
        watch.feed(source, [recent.get(f.frame_id) or Step(f) for f in history[source]])
    if history:
        latest = max(f.seconds for fs in history.values() for f in fs)
        watch.time_passed(latest)
        tracks.forget(latest)
    return watch, tracks


def landed_history(store: Storage, sources: set[str], own: set[tuple], since: float,
                   until: float) -> list[LandingRecord]:
    """The landing records of `sources` in the event hours from `since` to `until` (inclusive), landed by
    any partition or run, the frames `own` aside; one per frame, a processed one over an error."""
    kept: dict[tuple, LandingRecord] = {}
    hour = since
    while hour <= until:
        for record in hour_records(store, datetime.fromtimestamp(hour, UTC)):
            known = kept.get(record.identity)
            if (record.source_id in sources and record.identity not in own
                    and (known is None or record.processed and not known.processed)):
                kept[record.identity] = record
        hour += HOUR
    return list(kept.values())


def hour_records(store: Storage, hour: datetime, attempts: int = 3) -> list[LandingRecord]:
    """An hour's landing records; a file compacted (or retired) while it was read, the hour is listed and
    read again (a history read short would make the watch raise what was raised before)."""
    for _ in range(attempts - 1):
        try:
            return [record for key in landing_keys(store, hour) for record in read_records(store, key)]
        except BadObject:
            continue
    return [record for key in landing_keys(store, hour) for record in read_records(store, key)]


def carry_on(store: Storage, landed: LandedRange) -> None:
    """A range with nothing to feed (all of it out of range, or gaps) after a saved state that reached its
    start: the state is saved as reaching its end, so that the next range carries on from it instead of
    warming it again."""
    key = state_key(landed.topic, landed.partition, landed.generation)
    try:
        saved = json.loads(store.get(key)) if store.exists(key) else None
    except (BadObject, ValueError):
        return
    if isinstance(saved, dict) and isinstance(saved.get("through"), int) and landed.start <= saved["through"]:
        store.put(key, json.dumps({**saved, "through": max(saved["through"], landed.end)}).encode())


def _restored(load):
    try:
        return load()
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


MAX_ENCODING = 8  # ranges whose clips wait to be made; past that, the hourly run makes theirs
FINISH_WAIT_S = 120.0  # how long a run that ends waits for its clips under way


class LiveAlerts:
    """The watches of the partitions a run follows, kept between its ranges."""

    def __init__(self):
        self.watches: dict[tuple, tuple[int, Evaluator, TrackWatch]] = {}
        self.down: set[str] = set()  # webhooks that failed: one try per alert until one delivers
        self.retries_at = 0.0  # when a refused send (of any run) is due again: the ledger is looked at then
        self.clips = LiveClips()
        # Clips are drawn and encoded beside the next ranges, one at a time: a range waits on none.
        self.encoding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-clips")
        self.encoded: list[Future] = []

    def __call__(self, landed: LandedRange) -> None:
        # The run's own settings: those it was launched with, as the hourly assets read theirs.
        tracking, resource = landed.context.resources.tracking, landed.context.resources.alert_rules
        rules, zones, settings = resource.rules(), tracking.zones(), tracking.settings()
        if Evaluator(rules).idle:
            return
        records: list[LandingRecord] = list(landed.records())
        frames = event_frames(records)
        moments = [f.seconds for fs in frames.values() for f in fs]
        store = landed.store
        place = (store.uri(STATE), landed.topic, landed.partition, landed.generation)
        through, watch, tracks = self.watches.get(place, (-1, None, None))
        if (watch is None or through != landed.start or watch.rules_sha256 != rules.sha256
                or tracks.zones_sha256 != zones.sha256 or tracks.settings != settings
                or not seen_all(watch, frames)):
            if not moments:
                carry_on(store, landed)  # nothing to feed: what was saved goes on past this range
                return
            watch, tracks = load_watches(store, landed, rules, zones, settings, frames)
        fired, uris = [], {(r.source_id, r.frame_id): r.uri for r in records if r.uri}
        for source in sorted(frames):
            # Every rule sees the frames with their track ids, as the hourly tables give them.
            steps = tracks.feed(source, frames[source])
            self.clips.feed(source, [s.frame for s in steps],
                            {f.frame_id: uris[source, f.frame_id] for f in frames[source]
                             if (source, f.frame_id) in uris})
            fired += watch.feed(source, steps)
        if moments:
            fired += watch.time_passed(max(moments))
            tracks.forget(max(moments))
        fired.sort(key=lambda e: (e.seconds, e.source_id, e.rule, e.key))  # numbered as the hour orders them
        if fired:
            told, evidence = raise_alerts(landed, resource, rules, fired, records, frames, self.down)
            # Sends refused now: the ledger says when they are due.
            self.retries_at = 0.0 if told["retrying"] else self.retries_at
            for event in fired:
                self.clips.want(event, evidence.get(event.key, (None, None))[0])
        key = state_key(landed.topic, landed.partition, landed.generation)
        store.put(key, json.dumps({"through": landed.end, "watch": json.loads(watch.to_json()),
                                   "tracks": json.loads(tracks.to_json())}).encode())
        self.watches[place] = (landed.end, watch, tracks)
        if due := self.clips.due():
            if len(self.encoded) < MAX_ENCODING:
                self.encoded.append(self.encoding.submit(make_due, store, due, landed.max_frame_bytes))
            else:  # a backlog's alerts faster than clips are made: the hourly run makes these
                landed.context.log.info(f"live alerts: {len(due)} clips left to the hourly run (the clips "
                                        f"of {MAX_ENCODING} ranges are being made)")
        self.report_clips(landed.context.log)
        self.retry_refused(landed, resource, rules)

    def report_clips(self, log, wait_s: float = 0.0) -> None:
        """Log the clips made since the last report (waiting up to `wait_s` for those under way); a clip
        that failed is the hourly run's to make."""
        done = wait(self.encoded, timeout=wait_s).done
        self.encoded = [f for f in self.encoded if f not in done]
        for future in done:
            try:
                made, failed = future.result()
            except Exception as exc:  # noqa: BLE001 (the hourly alerts run makes every clip an alert lacks)
                made, failed = [], [f"{type(exc).__name__}: {exc}"]
            if made:
                log.info(f"live alerts: {len(made)} clips made ({', '.join(made)})")
            if failed:
                log.warning(f"live alerts: clips not made ({'; '.join(failed)}); the hourly run makes them")

    def finish(self, log, wait_s: float = FINISH_WAIT_S) -> None:
        """At a run's end: the clips under way made (up to `wait_s`) and told; those not begun by then are
        let go (the hourly run makes them), so the run's process ends with the clip it is making."""
        self.report_clips(log, wait_s)
        if let_go := [future for future in self.encoded if future.cancel()]:
            log.info(f"live alerts: the clips of {len(let_go)} ranges left to the hourly run")
        self.encoded = [f for f in self.encoded if not f.cancelled()]

    def retry_refused(self, landed: LandedRange, resource, rules) -> None:
        """Webhook sends refused before (by this run or another) tried again once their pause is over: a
        webhook's outage delays its alerts, range after range, and drops none."""
        if time.time() >= self.retries_at:
            ledger = Ledger(landed.store)
            _, due = notify.retry_webhooks(landed.kafka, ledger, rules, resource.token, self.down,
                                           landed.store)
            self.retries_at = min(due, time.time() + RETRIES_EVERY_S)


def raise_alerts(landed: LandedRange, resource, rules, fired: list[events.Event], records,
                 frames: dict[str, list[events.EventFrame]], down: set[str]) -> tuple[dict[str, int], dict]:
    """Number the alerts in the ledger, draw their evidence, tell Kafka and the webhooks (once each); the
    webhook sends per outcome, and each alert's evidence (annotated, crop) by its key."""
    store, ledger, links = landed.store, Ledger(landed.store), resource.links()
    numbers = [ledger.number(e.key, e.occurrence) for e in fired]
    by_frame = {(r.source_id, r.frame_id): r for r in records}
    seen = {(s, f.frame_id): f.seen for s, fs in frames.items() for f in fs}
    messages, drawn = [], {}
    for hour in sorted({hour_of(e.seconds) for e in fired}):
        mine = [(e, n) for e, n in zip(fired, numbers, strict=True) if hour_of(e.seconds) == hour]
        evidence = {e.key: at.draw_evidence(store, e, n, frame_row(by_frame.get((e.source_id, e.frame_id))),
                                            seen.get((e.source_id, e.frame_id), []), landed.max_frame_bytes)
                    for e, n in mine}
        drawn.update(evidence)
        table = at.alert_rows(datetime.fromtimestamp(hour, UTC), [e for e, _ in mine], [n for _, n in mine],
                              rules, evidence)
        messages += [notify.payload(row, resource.viewer_url, store, links) for row in table.to_pylist()]
    sent = notify.publish(landed.kafka, ledger, messages)
    mqtt_out.publish_alerts(getattr(landed.context.resources, "mqtt", None), ledger, messages,
                            landed.context.log.warning)
    told = notify.notify_webhooks(landed.kafka, ledger, rules, messages, resource.token, down, store)
    said = ", ".join(f"{m['number']} {m['rule']} ({m['source_id']})" for m in messages)
    landed.context.log.info(f"live alerts: {said}; {sent} newly sent to Kafka, {told['delivered']} to "
                            f"webhooks, {told['dead']} dead-lettered, {told['retrying']} to try again")
    return told, drawn


def frame_row(record: LandingRecord | None) -> dict | None:
    """A landing record as the evidence drawing takes a `frames` row."""
    if record is None:
        return None
    return {"status": record.status, "uri": record.uri, "captured_at": parse_time(record.captured_at)}

