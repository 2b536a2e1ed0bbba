"""The alerts asset through real materializations: each rule's alerts with their evidence, numbered once;
Kafka and webhooks told once, through failures, re-materializing, replays and backfills."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pyarrow as pa
import pytest

from imgpipeline.cli.bench.common import Hook as BenchHook
from imgpipeline.defs.alerts.assets import alerts
from imgpipeline.defs.alerts.ledger import Ledger
from imgpipeline.defs.tables import ALERTS, DETECTIONS
from imgpipeline.defs.tables.views import connect
from imgpipeline.defs.tracking.assets import tracking_tables
from imgpipeline.defs.warehouse import rows as warehouse_rows
from imgpipeline.defs.warehouse.assets import hourly_tables
from imgpipeline.ingest.messages import clip_key
from imgpipeline.resources import AlertsResource, StorageResource, TrackingResource
from imgpipeline.vision.quality import decode_image
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import wait_for
from imgpipeline_tests.test_defs.test_alerts.scene import RANGE, RULES, START, ZONES, records
from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all
from imgpipeline_tests.test_defs.test_tracking.test_tracking import ELEVEN, TEN, land, materialize

pytestmark = [pytest.mark.integration, pytest.mark.instance, pytest.mark.results]


class Hook(BenchHook):
    """A local webhook that answers 500 to its first `failures` POSTs (and 503 to every POST before
    `until`, a time.monotonic() moment), then 200; it keeps every request with its answer."""

    def __init__(self, failures: int = 0, until: float = 0.0):
        self.failures, self.until = failures, until  # a test may change them as it goes
        super().__init__(lambda hook: 503 if time.monotonic() < hook.until
                         else 500 if len(hook.requests) < hook.failures else 200)


@pytest.fixture
def hooks():
    ops, broken = Hook(failures=2), Hook(failures=1000)
    yield ops, broken
    ops.close()
    broken.close()


def setup(tmp_path, kafka, hooks, monkeypatch):
    ops, broken = hooks
    monkeypatch.setenv("OPS_TOKEN", "t0ken-never-logged")
    (tmp_path / "zones.yaml").write_text(ZONES)
    (tmp_path / "alerts.yaml").write_text(RULES % {"ops": ops.url, "broken": broken.url})
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    resources = {"storage": storage, "kafka": kafka,
                 "tracking": TrackingResource(zones_file=str(tmp_path / "zones.yaml")),
                 "alert_rules": AlertsResource(alerts_file=str(tmp_path / "alerts.yaml"))}
    return storage, resources


def stored_alerts(storage) -> list[dict]:
    rows = connect(storage).sql("SELECT * EXCLUDE (dt, hour) FROM alerts ORDER BY number").to_arrow_table()
    return rows.to_pylist()


def test_rules_fire_with_evidence_and_everyone_is_told_once(tmp_path, kafka, hooks, monkeypatch):
    ops, broken = hooks
    storage, resources = setup(tmp_path, kafka, hooks, monkeypatch)
    store = storage.open()
    landed = records(store)
    with fresh_instance() as instance:
        materialize([hourly_tables], *RANGE, resources, instance)
        result = materialize([alerts], *RANGE, resources, instance)
        first = stored_alerts(storage)

        by_rule = {}
        for row in first:
            by_rule.setdefault(row["rule"], []).append(row)
        assert sorted(by_rule) == ["car-seen", "on-the-bench", "person-through-door", "two-cars"]
        assert [len(by_rule[r]) for r in sorted(by_rule)] == [1, 1, 1, 1]  # each condition once
        assert [r["number"] for r in first] == [1, 2, 3, 4]
        crossing = by_rule["person-through-door"][0]
        assert crossing["track_id"] is not None and crossing["class_name"] == "person"
        assert crossing["fired_at"].hour == 11 and crossing["hour_start"].hour == 11
        for row in first:  # the annotated frame and a clip always (a camera); the crop when about one object
            assert store.exists(row["annotated_key"]) and store.exists(clip_key(row["annotated_key"])), row
            own = f"{row['frame_id']}.alert-{row['number']}.jpg"
            assert row["annotated_key"] == f"annotated/cam/2026-11-20/{own}"
        assert store.exists(crossing["crop_key"])
        assert by_rule["two-cars"][0]["crop_key"] is None

        # Kafka: every alert once, keyed by its number.
        topic = read_all(kafka, kafka.alerts_topic)
        assert sorted(int(m.key) for m in topic) == [1, 2, 3, 4]
        assert json.loads(topic[0].value)["url"].endswith(f"/alerts/{json.loads(topic[0].value)['number']}")
        # The webhook failed twice, then took the one alert its rule sends: one delivery, three tries.
        assert len(ops.requests) == 3
        assert [r["body"]["number"] for r in ops.requests] == [crossing["number"]] * 3
        assert ops.requests[-1]["headers"]["Authorization"] == "Bearer t0ken-never-logged"
        ledger = Ledger(store)
        assert ledger.deliveries(crossing["number"])["ops"]["attempts"] == 3
        # The webhook that never answers well, and is not to be retried later: tried twice, then
        # dead-lettered with the reason.
        bench = by_rule["on-the-bench"][0]
        assert len(broken.requests) == 2
        letters = read_all(kafka, f"{kafka.alerts_topic}.dlq")
        assert [(m.key, dict(m.headers)["reason"]) for m in letters] == [
            (f"{bench['number']}-broken".encode(), b"HTTP 500")]
        assert ledger.deliveries(bench["number"])["broken"]["state"] == "dead"
        metadata = result.asset_materializations_for_node("alerts")[0].metadata
        assert metadata["alerts"].value == 4 and metadata["dead_lettered"].value == 1
        assert metadata["clips"].value == 4
        assert "t0ken" not in json.dumps({k: str(v) for k, v in metadata.items()})

        # The hour made again, and the range backfilled again: the same alerts, nobody told twice, and
        # each alert's drawing and crop left as they were; one deleted meanwhile is drawn again.
        evidence = [k for row in first for k in (row["annotated_key"], row["crop_key"]) if k]
        drawn = {k: store.written(k)[k] for k in evidence}
        store.delete(crossing["annotated_key"])
        store.delete(crossing["crop_key"])
        materialize([alerts], RANGE[1], RANGE[1], resources, instance)
        materialize([hourly_tables, alerts], *RANGE, resources, instance)
        assert stored_alerts(storage) == first
        assert len(read_all(kafka, kafka.alerts_topic)) == 4
        assert len(ops.requests) == 3 and len(broken.requests) == 2
        again = {k: store.written(k)[k] for k in evidence}
        redrawn = {crossing["annotated_key"], crossing["crop_key"]}
        assert {k for k in evidence if again[k] != drawn[k]} == redrawn
        assert decode_image(store.get(crossing["crop_key"])).size > 0

        # The frames replayed: processed again by a later run over other offsets, the hours made again.
        replayed = [replace(r, processed_at="2026-11-21T09:00:00Z", run_id="replay") for r in landed]
        land(store, replayed, "frames-0-500-600")
        materialize([hourly_tables, alerts], *RANGE, resources, instance)
        assert stored_alerts(storage) == first
        assert len(read_all(kafka, kafka.alerts_topic)) == 4
        assert len(ops.requests) == 3


def test_an_hour_made_whole_by_a_late_range_tells_its_alerts_once(tmp_path, kafka, hooks, monkeypatch):
    """A range that lands late (frames captured between frames already built) makes the hour whole; the
    tracker, seeing frames it had not, gives the person another track id. The alert of its visit to the
    bench keeps its number and is told once; the crossing the late frames hold is a new alert."""
    storage, resources = setup(tmp_path, kafka, hooks, monkeypatch)
    store = storage.open()
    found = records(store, ranges=None)
    land(store, found[:52] + found[57:], "frames-0-0-100")  # the person lost for a second…
    with fresh_instance() as instance:
        materialize([hourly_tables, alerts], *RANGE, resources, instance)
        before = {row["rule"]: row for row in stored_alerts(storage)}
        land(store, found[52:57], "frames-0-100-200")  # …and found in a range that landed late
        materialize([hourly_tables, alerts], RANGE[1], RANGE[1], resources, instance)
    after = {row["rule"]: row for row in stored_alerts(storage)}
    bench = before["on-the-bench"]
    assert after["on-the-bench"]["track_id"] != bench["track_id"]  # the same visit, tracked anew
    assert {k: after["on-the-bench"][k] for k in ("number", "frame_id", "detection_index")} == {
        k: bench[k] for k in ("number", "frame_id", "detection_index")}
    assert "person-through-door" not in before and after["person-through-door"]["number"] not in {
        row["number"] for row in before.values()}
    messages = [json.loads(m.value) for m in read_all(kafka, kafka.alerts_topic)]
    assert sorted(m["number"] for m in messages) == sorted(row["number"] for row in after.values())
    told = Counter((m["rule"], m["source_id"], m["frame_id"], m["detection_index"]) for m in messages)
    assert [event for event, times in told.items() if times > 1] == []


def test_no_rules_no_alerts_and_quiet_data_raises_none(tmp_path, kafka, hooks, monkeypatch):
    storage, resources = setup(tmp_path, kafka, hooks, monkeypatch)
    (tmp_path / "alerts.yaml").write_text("rules:\n  - {name: dogs, kind: class, classes: [dog]}\n")
    records(storage.open())
    with fresh_instance() as instance:
        materialize([hourly_tables], *RANGE, resources, instance)
        materialize([alerts], *RANGE, resources, instance)
    store = storage.open()
    assert [k for k in store.list("warehouse/alerts/")] == [
        ALERTS.hour_key(hour) for hour in (TEN, ELEVEN)]  # both hours made, empty
    assert stored_alerts(storage) == []
    assert read_all(kafka, kafka.alerts_topic) == []
    assert not store.list("annotated/")


def test_a_webhook_redirect_or_hang_is_a_failed_delivery_never_followed():
    from imgpipeline.defs.alerts.notify import post
    from imgpipeline.vision.alert_rules import Webhook

    elsewhere = Hook(failures=0)
    moved: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):
            moved.append(self.headers.get("Authorization"))
            self.send_response(302)
            self.send_header("Location", elsewhere.url)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = Webhook(url=f"http://127.0.0.1:{server.server_port}/", attempts=3, backoff_s=0)
    delivery = post(hook, b"{}", "secret-token", "k")
    assert (delivery.delivered, delivery.attempts, delivery.reason) == (False, 1, "HTTP 302 (final)")
    assert moved == ["Bearer secret-token"] and elsewhere.requests == []  # the token went nowhere else
    server.shutdown()
    elsewhere.close()

    class Hang(BaseHTTPRequestHandler):
        def do_POST(self):
            threading.Event().wait(3)

        def log_message(self, *args):
            pass

    slow = ThreadingHTTPServer(("127.0.0.1", 0), Hang)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    pauses: list[float] = []
    hook = Webhook(url=f"http://127.0.0.1:{slow.server_port}/", attempts=2, backoff_s=0.5, timeout_s=0.3)
    delivery = post(hook, b"{}", None, "k", sleep=pauses.append)
    assert not delivery.delivered and delivery.attempts == 2 and "timed out" in delivery.reason
    assert pauses == [0.5]
    slow.shutdown()


def test_a_webhook_that_is_down_holds_a_run_up_by_one_retry_sequence(tmp_path, kafka):
    from imgpipeline.defs.alerts.notify import notify_webhooks
    from imgpipeline.vision.alert_rules import parse

    down = Hook(failures=1000)
    rules = parse(f"""
notify: {{down: {{url: "{down.url}", attempts: 3, backoff_s: 0, retry_for_s: 0}}}}
rules: [{{name: r, kind: class, classes: [dog], notify: [down]}}]
""".encode())
    ledger = Ledger(StorageResource(uri=(tmp_path / "store").as_uri()).open())
    messages = [{"number": n, "rule": "r"} for n in (1, 2, 3)]
    assert notify_webhooks(kafka, ledger, rules, messages, lambda env: None) == {
        "delivered": 0, "dead": 3, "retrying": 0}
    assert [r["body"]["number"] for r in down.requests] == [1, 1, 1, 2, 3]
    letters = read_all(kafka, f"{kafka.alerts_topic}.dlq")
    assert sorted(int(m.key.split(b"-")[0]) for m in letters) == [1, 2, 3]
    assert notify_webhooks(kafka, ledger, rules, messages, lambda env: None) == {
        "delivered": 0, "dead": 0, "retrying": 0}
    # Notified again and again (the live lane, a range at a time), it is tried once per alert while down,
    # and fully again once it delivered.
    failed: set[str] = set()
    for n in (4, 5):
        assert notify_webhooks(kafka, ledger, rules, [{"number": n, "rule": "r"}], lambda env: None,
                               failed) == {"delivered": 0, "dead": 1, "retrying": 0}
    assert [r["body"]["number"] for r in down.requests][5:] == [4, 4, 4, 5] and failed == {"down"}
    down.failures = len(down.requests)  # it is back
    assert notify_webhooks(kafka, ledger, rules, [{"number": 6, "rule": "r"}], lambda env: None,
                           failed) == {"delivered": 1, "dead": 0, "retrying": 0}
    assert failed == set()
    down.close()


@pytest.mark.edge
def test_a_webhook_address_is_never_said(tmp_path, kafka):
    """A webhook's login and the token in its path or query stay out of every reason, ledger entry,
    dead-letter header and config error, whatever the failure repeats of the address."""
    from imgpipeline import ConfigError
    from imgpipeline.defs.alerts.notify import notify_webhooks
    from imgpipeline.services.process import free_port
    from imgpipeline.vision.alert_rules import parse

    secrets = ("pa55-SECRET", "tok-SECRET", "sig-SECRET")
    closed = free_port()
    hooks = {  # each fails with text that repeats part of the address
        "login": f"http://bot:pa55-SECRET@127.0.0.1:{closed}/services/T0/B0/tok-SECRET?sig=sig-SECRET",
        "control": f"http://127.0.0.1:{closed}/services/T0/tok-SECRET\\x01?sig=sig-SECRET",  # YAML's escape
        "refused": f"http://127.0.0.1:{closed}/services/T0/tok-SECRET?sig=sig-SECRET",
    }
    notify = ", ".join(f'{name}: {{url: "{url}", attempts: 1, retry_for_s: 0}}'
                       for name, url in hooks.items())
    rules = parse(f"notify: {{{notify}}}\nrules: [{{name: r, kind: class, classes: [dog], notify: "
                  f"[{', '.join(hooks)}]}}]\n".encode())
    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    assert notify_webhooks(kafka, Ledger(store), rules, [{"number": 7, "rule": "r"}], lambda env: None) == {
        "delivered": 0, "dead": 3, "retrying": 0}
    deliveries = Ledger(store).deliveries(7)
    assert set(deliveries) == set(hooks)
    assert all(d["state"] == "dead" and d["reason"] for d in deliveries.values())
    assert "control characters" in deliveries["control"]["reason"]  # the client's words, no token
    letters = read_all(kafka, f"{kafka.alerts_topic}.dlq")
    said = [json.dumps(deliveries)] + [v.decode("utf-8", "replace") for m in letters for _, v in m.headers]
    said += [store.get(k).decode() for k in store.list("alerts/")]
    assert len(letters) == 3 and not [s for s in secrets for text in said if s in text]
    with pytest.raises(ConfigError) as refused:
        parse(b'notify: {x: {url: "ftp://bot:pa55-SECRET@host/tok-SECRET"}}\nrules: []\n')
    assert "ftp://***@host/***" in str(refused.value) and not [s for s in secrets if s in str(refused.value)]


CAMERA_RULES = """
rules:
  - {name: dark, kind: dark}
  - {name: frozen, kind: frozen, frames: 3}
  - {name: silent, kind: silent, minutes: 2}
  - {name: lingering, kind: dwell, zone: bench, seconds: 1, classes: [person]}
"""


def test_camera_and_dwell_rules_read_the_stored_tables(tmp_path, kafka, hooks, monkeypatch):
    storage, resources = setup(tmp_path, kafka, hooks, monkeypatch)
    (tmp_path / "alerts.yaml").write_text(CAMERA_RULES)

    def dark_and_frozen(found):
        for record in found[10:15]:  # the dark filter skipped these: no detections
            record.status, record.brightness = "skipped_dark", 4.0
            record.detections, record.object_count = [], 0
        for record in found[30:36]:
            record.sha256 = "a" * 64

    store = storage.open()
    records(store, tweak=dark_and_frozen)
    # The camera comes back three minutes later: silent for more than two minutes in between.
    records(store, START + timedelta(minutes=3), "later", "frames-0-100-200")
    with fresh_instance() as instance:
        materialize([hourly_tables], *RANGE, resources, instance)
        materialize([alerts], *RANGE, resources, instance)
    fired = {row["rule"]: row for row in stored_alerts(storage)}
    assert sorted(fired) == ["dark", "frozen", "lingering", "silent"]
    assert fired["dark"]["frame_id"] == "cam-0010"
    assert fired["frozen"]["frame_id"] == "cam-0032"  # the third identical frame
    assert fired["silent"]["frame_ids"] == ["cam-0099", "later-0000"]
    assert fired["lingering"]["track_id"] is not None
    assert "in zone bench for 1 s" in fired["lingering"]["detail"]
    assert sum(row["rule"] == "dark" for row in stored_alerts(storage)) == 1


def test_the_alert_checks_fail_on_tables_that_break_them(tmp_path):
    from imgpipeline.defs.alerts import checks as ac
    from imgpipeline.defs.tables.checks import no_failures

    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    ledger = Ledger(store)
    row = {name: None for name in ALERTS.schema.names}
    row.update(number=ledger.number("k1"), alert_key="k1", source_id="cam", frame_id="f1", frame_ids=["f1"])

    def failed(rows, drawable=frozenset()):
        failures = no_failures(ac.CHECKS, "alerts")
        table = pa.Table.from_pylist(rows, schema=ALERTS.schema)
        ac.check_hour("h", table, ledger, store, drawable, failures, {})
        return {name for (_, name), found in failures.items() if found}

    assert failed([row]) == set()
    assert failed([row, {**row, "alert_key": "k2"}]) == {"one_number_per_alert"}  # a number twice
    assert failed([{**row, "number": 99}]) == {"one_number_per_alert"}  # not the ledger's number
    assert failed([row], {("cam", "f1")}) == {"evidence_stored"}  # a readable frame without its image
    store.put("annotated/x.jpg", b"jpeg")
    assert failed([{**row, "annotated_key": "annotated/x.jpg"}], {("cam", "f1")}) == set()
    assert failed([{**row, "annotated_key": "annotated/gone.jpg"}]) == {"evidence_stored"}


@pytest.mark.edge
def test_a_frame_captured_out_of_range_is_no_event_frame():
    from imgpipeline.defs.alerts.rows import event_frames
    from imgpipeline.defs.records.record import LandingRecord

    def row(frame_id: str, captured: str, status: str) -> LandingRecord:
        return LandingRecord(schema=1, frame_id=frame_id, source_id="cam", captured_at=captured,
                             status=status, ingested_at="2026-11-20T10:00:00.000Z",
                             processed_at="2026-11-20T10:00:01.000Z")

    frames = warehouse_rows.frames_table([row("a", "2026-11-20T10:00:00.000Z", "detected"),
                                          row("b", "2099-01-01T00:00:00.000Z", "out_of_range")])
    found = event_frames(frames, DETECTIONS.schema.empty_table())
    assert [f.frame_id for f in found["cam"]] == ["a"]  # a clock decades ahead is no silence


LINK_KEY = "a-link-key-of-forty-characters-and-more-0123"
LINKED = """
notify:
  chat: {url: "%(chat)s", format: slack, attempts: 1}
  inline: {url: "%(inline)s", inline_snapshot: true, attempts: 1}
rules:
  - {name: person-through-door, kind: line_cross, line: door, classes: [person], notify: [chat, inline]}
"""


def test_a_notification_carries_its_snapshot_which_the_links_holder_opens_without_the_login(tmp_path, kafka):
    """A chat webhook gets a line with the snapshot's link, a JSON one the snapshot inline too; the viewer,
    which has a login, serves the linked snapshot and clip to whoever holds the link, and nothing else to
    such a link: another alert's, another object's, a changed expiry, an expired one."""
    from imgpipeline.cli.serve import Running, Warehouse
    from imgpipeline.web.app import create_app
    from imgpipeline.web.guard import Access
    from imgpipeline.web.links import EvidenceLinks
    from imgpipeline_tests.test_web.test_guard import sent

    chat, inline = BenchHook(), BenchHook()
    (tmp_path / "zones.yaml").write_text(ZONES)
    (tmp_path / "alerts.yaml").write_text(LINKED % {"chat": chat.url, "inline": inline.url})
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    rules = AlertsResource(alerts_file=str(tmp_path / "alerts.yaml"), link_key=LINK_KEY)
    tracking = TrackingResource(zones_file=str(tmp_path / "zones.yaml"))
    store = storage.open()
    records(store)
    resources = {"storage": storage, "kafka": kafka, "tracking": tracking, "alert_rules": rules}
    with fresh_instance() as instance:
        materialize([hourly_tables, alerts], *RANGE, resources, instance)
    [alert] = stored_alerts(storage)
    [posted], [said] = [r["body"] for r in inline.requests], [r["body"] for r in chat.requests]
    chat.close()
    inline.close()
    snapshot = store.get(alert["annotated_key"])
    assert base64.b64decode(posted["snapshot_jpeg"]) == snapshot
    [on_kafka] = [json.loads(m.value) for m in read_all(kafka, kafka.alerts_topic)]
    assert on_kafka["snapshot_url"] == posted["snapshot_url"] and "snapshot_jpeg" not in on_kafka
    assert said["blocks"][-1] == {"type": "image", "image_url": posted["snapshot_url"],
                                  "alt_text": f"alert {alert['number']}: the frame with its detections"}
    assert f"#{alert['number']}" in said["text"] and f"<{posted['url']}|open it>" in said["text"]

    viewer = Running(create_app(Warehouse(storage, tracking, rules, refresh_s=1),
                                Access.listening_on("127.0.0.1", (), ("ann", "a password"), rules.links())))
    try:
        def status(link: str, headers: dict | None = None) -> tuple[int, bytes]:
            code, _, body = sent(viewer.url, link.removeprefix(rules.viewer_url), headers=headers)
            return code, body

        assert status(posted["snapshot_url"]) == (200, snapshot)
        # Shown in another site's page (a webmail, a chat), as an image.
        assert status(posted["snapshot_url"], {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
                                               "Sec-Fetch-Dest": "image"}) == (200, snapshot)
        assert status(posted["clip_url"]) == (200, store.get(clip_key(alert["annotated_key"])))
        path, _, query = posted["snapshot_url"].removeprefix(rules.viewer_url).partition("?")
        number = alert["number"]
        expires = int(query.split("&")[0].removeprefix("expires="))
        for link in (path, f"/alerts/{number}?{query}", f"/alerts/{number}/crop.jpg?{query}",
                     f"/alerts/{number + 1}/annotated.jpg?{query}", f"{path}?{query}&x=1",
                     f"{path}?{query}&{query}", f"{path}?{query.replace(str(expires), str(expires + 1))}",
                     f"/alerts/{number}/../{number}/annotated.jpg?{query}"):
            assert status(link)[0] == 401, link
        expired = EvidenceLinks(LINK_KEY.encode(), 60).signed(path, time.time() - 61)
        assert status(expired)[0] == 401
        assert status(path, {"Authorization": "Basic " + base64.b64encode(b"ann:a password").decode()}) == (
            200, snapshot)
    finally:
        viewer.stop()


class MailServer:
    """A real SMTP server (aiosmtpd) on a loopback port: every message it took, and the logins it was given;
    it answers `answer` to each message (250 unless told), and takes the one login `login`."""

    def __init__(self, answer: str = "250 OK", login: tuple[str, str] = ("alerts", "mail-secret")):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        from imgpipeline.services.process import free_port

        self.messages, self.logins = [], []
        server = self

        class Handler:
            async def handle_DATA(self, smtp, session, envelope):
                server.messages.append(envelope)
                return answer

        def check(smtp, session, envelope, mechanism, auth_data):
            given = (auth_data.login.decode(), auth_data.password.decode())
            server.logins.append(given)
            return AuthResult(success=given == login, handled=False)  # refused: a 535 answer

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free_port(), authenticator=check,
                                     auth_require_tls=False)
        self.controller.start()
        self.address = f"127.0.0.1:{self.controller.port}"

    def close(self) -> None:
        self.controller.stop()


MAILED = """
notify:
  mail: {to: [ops@example.com, guard@example.com], from: alerts@example.com, smtp: "%(mail)s", security: none,
         user: alerts, password_env: MAIL_PASSWORD, attempts: 1}
  refusing: {to: [ops@example.com], from: alerts@example.com, smtp: "%(refusing)s", security: none,
             attempts: 1}
rules:
  - {name: person-through-door, kind: line_cross, line: door, classes: [person], notify: [mail, refusing]}
"""


def test_an_alert_is_mailed_once_with_its_snapshot_and_a_refusing_server_is_dead_lettered(
        tmp_path, kafka, monkeypatch):
    """A rule notifies by e-mail: the server, which wants a login, gets the alert once with its snapshot
    attached and its links; another that answers 550 has it dead-lettered with that reason. Made again,
    nobody is mailed twice; the password is in no reason or ledger entry."""
    from email import message_from_bytes, policy

    mail, refusing = MailServer(), MailServer(answer="550 mailbox unavailable")
    monkeypatch.setenv("MAIL_PASSWORD", "mail-secret")
    (tmp_path / "zones.yaml").write_text(ZONES)
    (tmp_path / "alerts.yaml").write_text(MAILED % {"mail": mail.address, "refusing": refusing.address})
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    rules = AlertsResource(alerts_file=str(tmp_path / "alerts.yaml"), link_key=LINK_KEY)
    resources = {"storage": storage, "kafka": kafka, "alert_rules": rules,
                 "tracking": TrackingResource(zones_file=str(tmp_path / "zones.yaml"))}
    store = storage.open()
    records(store)
    try:
        with fresh_instance() as instance:
            materialize([hourly_tables, alerts], *RANGE, resources, instance)
            materialize([alerts], *RANGE, resources, instance)  # made again: nobody mailed twice
    finally:
        mail.close()
        refusing.close()
    [alert] = stored_alerts(storage)
    [envelope] = mail.messages
    assert mail.logins == [("alerts", "mail-secret")]
    assert sorted(envelope.rcpt_tos) == ["guard@example.com", "ops@example.com"]
    letter = message_from_bytes(envelope.content, policy=policy.default)
    assert letter["Subject"] == f"[warning] alert #{alert['number']}: person-through-door on cam"
    assert letter["Message-ID"] == f"<imgpipeline-alert-{alert['number']}-mail@imgpipeline>"
    [attached] = list(letter.iter_attachments())
    assert attached.get_content_type() == "image/jpeg"
    assert attached.get_content() == store.get(alert["annotated_key"])
    [on_kafka] = [json.loads(m.value) for m in read_all(kafka, kafka.alerts_topic)]
    text = letter.get_body(("plain",)).get_content()
    assert on_kafka["snapshot_url"] in text and on_kafka["url"] in text and alert["detail"] in text
    ledger = Ledger(store)
    assert ledger.deliveries(alert["number"])["mail"]["state"] == "delivered"
    dead = ledger.deliveries(alert["number"])["refusing"]
    assert (dead["state"], dead["reason"]) == ("dead", "SMTP 550: b'mailbox unavailable' (final)")
    [letter_dead] = read_all(kafka, f"{kafka.alerts_topic}.dlq")
    assert dict(letter_dead.headers)["target"] == b"refusing"
    assert len(refusing.messages) == 1
    assert "mail-secret" not in json.dumps(ledger.deliveries(alert["number"]))


def test_a_wrong_mail_password_is_tried_again_later_and_says_no_password(tmp_path):
    """A login refused (a password changed) is tried `attempts` times and then again by later passes
    until the horizon, like a webhook that is down; a password SMTP cannot send is final. Neither reason
    holds any of the password."""
    from imgpipeline.defs.alerts.notify import mail as send_mail
    from imgpipeline.vision.alert_rules import Email

    server = MailServer()
    try:
        email = Email.model_validate({"to": ["ops@example.com"], "from": "alerts@example.com",
                                      "smtp": server.address, "security": "none", "user": "alerts",
                                      "password_env": "MAIL_PASSWORD", "attempts": 2, "backoff_s": 0})
        message = {"number": 5, "severity": "info", "rule": "r", "source_id": "cam", "detail": "d",
                   "fired_at": "2026-11-20T11:00:00Z", "url": "http://127.0.0.1:8765/alerts/5"}
        delivery = send_mail(email, message, None, "wrong-secret-x", "imgpipeline-alert-5-mail")
        unsendable = send_mail(email, message, None, "wröng-secret-ü", "imgpipeline-alert-5-mail")
    finally:
        server.close()
    assert (delivery.delivered, delivery.final, delivery.attempts) == (False, False, 2)
    assert delivery.reason.startswith("SMTP 535") and "wrong-secret-x" not in delivery.reason
    assert (unsendable.delivered, unsendable.final) == (False, True)
    assert "ö" not in unsendable.reason and "ü" not in unsendable.reason and "secret" not in unsendable.reason
    assert server.messages == [] and set(server.logins) == {("alerts", "wrong-secret-x")}


def test_a_mail_server_that_answers_a_line_at_a_time_holds_an_attempt_no_longer_than_its_timeout():
    """A server whose greeting never ends (a line every 0.3 s: each read is within the timeout): each
    attempt is cut at `timeout_s` in all, and the delivery fails saying so, to be tried again later."""
    import socket
    import threading

    from imgpipeline.defs.alerts.notify import mail as send_mail
    from imgpipeline.vision.alert_rules import Email

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while not stop.wait(0.3):  # scenario: a server that answers slowly, line by line
                    try:
                        conn.sendall(b"220-still greeting\r\n")
                    except OSError:
                        break

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    email = Email.model_validate({"to": ["ops@example.com"], "from": "alerts@example.com",
                                  "smtp": f"127.0.0.1:{listener.getsockname()[1]}", "security": "none",
                                  "timeout_s": 1, "attempts": 2, "backoff_s": 0})
    message = {"number": 6, "severity": "info", "rule": "r", "source_id": "cam", "detail": "d",
               "fired_at": "2026-11-20T11:00:00Z", "url": "http://127.0.0.1:8765/alerts/6"}
    done: list = []
    sender = threading.Thread(target=lambda: done.append(send_mail(email, message, None, None, "k")))
    sender.start()
    sender.join(30)
    stop.set()
    listener.close()
    assert done, "the attempts were never cut"
    [delivery] = done
    assert (delivery.delivered, delivery.final, delivery.attempts) == (False, False, 2)
    assert delivery.reason == "TimeoutError: the SMTP server took more than 1 s"


PLAIN = """
rules:
  - {name: person-through-door, kind: line_cross, line: door, classes: [person], severity: critical}
  - {name: car-seen, kind: class, classes: [car], severity: info}
"""


class Subscriber:
    """A real MQTT client subscribed to `topics` (retained messages included): every message it got."""

    def __init__(self, settings, topics: list[str]):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda client, data, m: self.messages.append((m.topic, m.payload, m.retain))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        settings.connect(self.client)
        self.client.loop_start()
        self.client.subscribe([(topic, 1) for topic in topics])
        assert subscribed.wait(30), "the broker never acknowledged the subscription"

    def on(self, topic: str) -> list[bytes]:
        return [payload for got, payload, _ in self.messages if got == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publishing(tmp_path, kafka, services):
    """A publish prefix of its own on the services' Mosquitto, the scene's zones and the PLAIN rules: the
    prefix, the MQTT settings, the storage and the run's resources."""
    import uuid

    from imgpipeline.resources.mqtt import MqttSettings
    from imgpipeline_tests.conftest import require_tool

    require_tool(None if services.mqtt.running() else "mosquitto is not running: apt-get install mosquitto")
    prefix = f"site-{uuid.uuid4().hex[:8]}"
    mqtt = MqttSettings(broker=services.mqtt.address(services.mqtt.ports), publish_prefix=prefix)
    (tmp_path / "zones.yaml").write_text(ZONES)
    (tmp_path / "alerts.yaml").write_text(PLAIN)
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    resources = {"storage": storage, "kafka": kafka, "mqtt": mqtt,
                 "alert_rules": AlertsResource(alerts_file=str(tmp_path / "alerts.yaml")),
                 "tracking": TrackingResource(zones_file=str(tmp_path / "zones.yaml"))}
    return prefix, mqtt, storage, resources


def test_alerts_and_snapshots_reach_an_mqtt_subscriber_and_home_assistant_finds_each_camera(
        tmp_path, kafka, services):
    """With a publish prefix, the alerts run publishes every alert of the tables once on `<prefix>/alerts`
    (made again, none twice), each camera's last alert retained, and Home Assistant's discovery of its
    entities (checked against the keys the MQTT sensor and image schemas require); the fast lane's listener
    puts each camera's latest frame, retained, on its snapshot topic."""

    from imgpipeline.defs.alerts.mqtt_out import CameraSnapshots, object_id
    from imgpipeline.defs.records.listeners import LandedRange

    prefix, mqtt, storage, resources = publishing(tmp_path, kafka, services)
    store = storage.open()
    landed = records(store)
    source, config = landed[0].source_id, f"homeassistant/+/{object_id(landed[0].source_id)}/+/config"
    live = Subscriber(mqtt, [f"{prefix}/#"])
    try:
        with fresh_instance() as instance:
            result = materialize([hourly_tables, alerts], *RANGE, resources, instance)
            materialize([alerts], *RANGE, resources, instance)  # made again: nothing published twice
            materialize([tracking_tables], *RANGE, resources, instance)  # the day's crossings, counted
        with dg.build_op_context(resources={"mqtt": mqtt, "tracking": resources["tracking"]}) as context:
            CameraSnapshots()(LandedRange(context, kafka, store, kafka.frames_topic, 0, 0, len(landed), 0,
                                          lambda: iter(landed), storage.max_frame_bytes))
        stored = stored_alerts(storage)
        wait_for(lambda: len(live.on(f"{prefix}/alerts")) >= len(stored)
                 and live.on(f"{prefix}/{source}/snapshot"), 30, "the alerts and the snapshot on MQTT")
        time.sleep(1)  # scenario: a second for any message sent twice to arrive too
        said = [json.loads(m) for m in live.on(f"{prefix}/alerts")]
        assert sorted((m["number"], m["rule"], m["source_id"], m["frame_id"]) for m in said) == sorted(
            (r["number"], r["rule"], r["source_id"], r["frame_id"]) for r in stored)
        metadata = result.asset_materializations_for_node("alerts")[0].metadata
        assert metadata["sent_to_mqtt"].value == len(stored)
    finally:
        live.close()
    # Someone subscribing later (Home Assistant starting) gets each camera's retained state.
    later = Subscriber(mqtt, [f"{prefix}/{source}/#", config])
    try:
        wait_for(lambda: len({t for t, _, retained in later.messages if retained}) >= 8, 30,
                 "the retained messages", explain=lambda: str([t for t, _, _ in later.messages]))
    finally:
        later.close()
    newest = max(landed, key=lambda r: r.captured_at)
    assert later.on(f"{prefix}/{source}/snapshot") == [store.get(store.key_for(newest.uri))]
    assert json.loads(later.on(f"{prefix}/{source}/alert")[0])["number"] == max(
        r["number"] for r in stored if r["source_id"] == source)
    day = newest.captured_at[:10]
    crossed = connect(storage).sql(
        "SELECT class_name, sum(crossed_in)::INT, sum(crossed_out)::INT FROM object_counts "
        "WHERE kind = 'line' AND name = 'door' AND dt = ? AND source_id = ? AND zones_sha256 = ? "
        "GROUP BY ALL HAVING sum(crossed_in) + sum(crossed_out) > 0",
        params=[day, source, resources["tracking"].zones().sha256]).fetchall()
    assert crossed

    def state(record) -> dict:
        """The camera's state as its frame and the tables say: on the bench, an object whose box's bottom
        centre lies in the zone (x 400..640, the frame's height); the door's crossings of the day."""
        seen = Counter(d["class_name"] for d in record.detections)
        benched = Counter(d["class_name"] for d in record.detections
                          if 400 <= d["box"][0] + d["box"][2] / 2 <= 640)
        return {"source_id": source, "frame_id": record.frame_id, "captured_at": record.captured_at,
                "total": len(record.detections), "objects": dict(sorted(seen.items())),
                "zones": {"bench": {"total": benched.total(), "objects": dict(sorted(benched.items()))}},
                "lines": {"door": {"day": day, "total": sum(i + o for _, i, o in crossed),
                                   "in": sum(i for _, i, _ in crossed), "out": sum(o for *_, o in crossed),
                                   "classes": {c: {"in": i, "out": o} for c, i, o in sorted(crossed)}}}}

    assert json.loads(later.on(f"{prefix}/{source}/state")[0]) == state(newest)
    # A frame with the person on the bench: the zone's entity counts one.
    on_bench = max(n for n, r in enumerate(landed) if state(r)["zones"]["bench"]["objects"].get("person"))
    with dg.build_op_context(resources={"mqtt": mqtt, "tracking": resources["tracking"]}) as context:
        CameraSnapshots()(LandedRange(context, kafka, store, kafka.frames_topic, 0, 0, on_bench + 1, 0,
                                      lambda: iter(landed[:on_bench + 1]), storage.max_frame_bytes))
    benched = Subscriber(mqtt, [f"{prefix}/{source}/state"])
    try:
        wait_for(lambda: benched.on(f"{prefix}/{source}/state"), 30, "the state retained")
    finally:
        benched.close()
    assert json.loads(benched.on(f"{prefix}/{source}/state")[0]) == state(landed[on_bench])
    configs = {"/".join(t.split("/")[1::2]): json.loads(p) for t, p, _ in later.messages
               if t.startswith("homeassistant/")}
    assert set(configs) == {"sensor/last_alert", "sensor/objects", "image/snapshot", "sensor/zone_bench",
                            "sensor/line_door"}
    assert configs["sensor/zone_bench"]["value_template"] == '{{ value_json.zones["bench"].total }}'
    assert configs["sensor/line_door"]["value_template"] == '{{ value_json.lines["door"].total }}'
    assert configs["sensor/last_alert"]["state_topic"] == f"{prefix}/{source}/alert"
    assert configs["sensor/objects"]["state_topic"] == f"{prefix}/{source}/state"
    assert configs["image/snapshot"]["image_topic"] == f"{prefix}/{source}/snapshot"
    for entity in configs.values():  # the keys Home Assistant's MQTT sensor and image schemas require
        assert {"unique_id", "device", "name"} <= set(entity) and entity["device"]["identifiers"]
        assert "state_topic" in entity or "image_topic" in entity


def test_the_days_crossings_on_mqtt_are_counted_live_until_the_hourly_build_counts_them(
        tmp_path, kafka, services):
    """Ranges landed one by one on the fast lane: each camera's state on MQTT carries the door's crossings of
    the day as the live alerts counted them (a range fed again after a kill counts nothing twice); once the
    hours are built, as object_counts has them, and the two agree (the live tracker gives the hourly one's
    ids)."""

    from imgpipeline.defs.alerts.live import LiveAlerts
    from imgpipeline.defs.alerts.mqtt_out import CameraSnapshots
    from imgpipeline.defs.records.listeners import LandedRange

    prefix, mqtt, storage, resources = publishing(tmp_path, kafka, services)
    store = storage.open()
    landed = records(store, ranges=None)
    for n, record in enumerate(landed):
        record.offset = n
    lane, snapshots, size = LiveAlerts(), CameraSnapshots(), 20

    def door() -> dict:
        topic = f"{prefix}/cam/state"
        said = Subscriber(mqtt, [topic])
        try:
            wait_for(lambda: said.on(topic), 30, "the camera's state")
        finally:
            said.close()
        return json.loads(said.on(topic)[0])["lines"]["door"]

    run = {k: resources[k] for k in ("tracking", "alert_rules", "mqtt")}
    with dg.build_op_context(resources=run) as context:
        for start in range(0, len(landed), size):
            part = landed[start:start + size]
            land(store, part, f"frames-0-{start}-{start + len(part)}")
            ranged = LandedRange(context, kafka, store, "frames", 0, start, start + len(part), 0,
                                 lambda part=part: iter(part), storage.max_frame_bytes)
            lane(ranged)
            snapshots(ranged)
        live = door()
        # The last range again, by a run taking over from one killed before it was accounted for: the
        # saved watch has its frames, none is counted twice.
        LiveAlerts()(ranged)
        snapshots(ranged)
        assert door() == live
        with fresh_instance() as instance:
            materialize([hourly_tables, tracking_tables], *RANGE, resources, instance)
        snapshots(ranged)
        built = door()
    crossed = connect(storage).sql(
        "SELECT class_name, sum(crossed_in)::INT, sum(crossed_out)::INT FROM object_counts "
        "WHERE kind = 'line' AND name = 'door' AND source_id = 'cam' AND zones_sha256 = ? "
        "GROUP BY ALL HAVING sum(crossed_in) + sum(crossed_out) > 0",
        params=[resources["tracking"].zones().sha256]).fetchall()
    assert built["classes"] == {c: {"in": i, "out": o} for c, i, o in crossed} and crossed
    assert live == built


def test_an_mqtt_broker_away_holds_up_no_alert_and_the_next_run_publishes_them(tmp_path, kafka, services):
    """The broker away (a port nothing listens on): the alerts run succeeds, Kafka has every alert, the log
    says MQTT missed them; the next run, the broker back, publishes each once."""
    import uuid

    from imgpipeline.defs.alerts.mqtt_out import CameraSnapshots
    from imgpipeline.defs.records.listeners import LandedRange
    from imgpipeline.resources.mqtt import MqttSettings
    from imgpipeline.services.process import free_port
    from imgpipeline_tests.conftest import require_tool

    require_tool(None if services.mqtt.running() else "mosquitto is not running: apt-get install mosquitto")
    prefix = f"site-{uuid.uuid4().hex[:8]}"
    up = MqttSettings(broker=services.mqtt.address(services.mqtt.ports), publish_prefix=prefix)
    away = MqttSettings(broker=f"127.0.0.1:{free_port()}", publish_prefix=prefix)
    (tmp_path / "zones.yaml").write_text(ZONES)
    (tmp_path / "alerts.yaml").write_text(PLAIN)
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    resources = {"storage": storage, "kafka": kafka,
                 "alert_rules": AlertsResource(alerts_file=str(tmp_path / "alerts.yaml")),
                 "tracking": TrackingResource(zones_file=str(tmp_path / "zones.yaml"))}
    landed = records(storage.open())
    live = Subscriber(up, [f"{prefix}/alerts"])
    try:
        with fresh_instance() as instance:
            missed = materialize([hourly_tables, alerts], *RANGE, {**resources, "mqtt": away}, instance)
            logs = [e.message for e in instance.all_logs(missed.run_id)]
            stored = stored_alerts(storage)
            assert len(read_all(kafka, kafka.alerts_topic)) == len(stored) > 0
            missed_said = [m for m in logs if m.startswith("MQTT: ") and "alerts not published" in m]
            assert sum(int(m.split()[1]) for m in missed_said) == len(stored), logs
            materialize([alerts], *RANGE, {**resources, "mqtt": up}, instance)
        # The fast lane's listener, the broker away: a warning, and the range goes on.
        warned = []
        with dg.build_op_context(resources={"mqtt": away}) as context:
            context.log.warning = warned.append
            CameraSnapshots()(LandedRange(context, kafka, storage.open(), kafka.frames_topic, 0, 0,
                                          len(landed), 0, lambda: iter(landed), storage.max_frame_bytes))
        assert len(warned) == 1 and warned[0].startswith("MQTT: cameras' snapshots not published"), warned
        wait_for(lambda: len(live.on(f"{prefix}/alerts")) >= len(stored), 30, "the alerts on MQTT")
        time.sleep(1)  # scenario: a second for any message sent twice to arrive too
    finally:
        live.close()
    published = sorted(json.loads(m)["number"] for m in live.on(f"{prefix}/alerts"))
    assert published == [r["number"] for r in stored]
