"""Webhooks through an outage: an alert a webhook refuses is tried again, by the live lane's later ranges
and by later alerts runs, with a doubling pause, until the webhook's retry horizon; delivered once when the
webhook is back, and dead-lettered with its reason only once the horizon has passed."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from imgpipeline.defs.alerts.assets import alerts
from imgpipeline.defs.alerts.ledger import Ledger
from imgpipeline.defs.alerts.live import LiveAlerts
from imgpipeline.defs.alerts.notify import Delivery, next_retry, retry_webhooks
from imgpipeline.defs.records.listeners import LandedRange
from imgpipeline.defs.warehouse.assets import hourly_tables
from imgpipeline.resources import AlertsResource, StorageResource
from imgpipeline.vision.alert_rules import Webhook, parse
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import run_resources
from imgpipeline_tests.scenes import landing_records
from imgpipeline_tests.test_defs.test_alerts.scene import RANGE, RULES, records
from imgpipeline_tests.test_defs.test_alerts.test_alerts import Hook, setup
from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all
from imgpipeline_tests.test_defs.test_tracking.test_tracking import materialize

START = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
DOG_RULES = """
notify: {ops: {url: "%(url)s", attempts: 2, backoff_s: %(backoff)s%(horizon)s}}
rules: [{name: dog-seen, kind: class, classes: [dog], cooldown_s: 0, notify: [ops]}]
"""


class Camera:
    """A camera's frames landing range after range on the fast lane, a dog in every other frame (so each
    range of two frames raises one `dog-seen` alert), fed to the live alerts as follow_frames feeds them."""

    def __init__(self, kafka, store):
        self.kafka, self.store, self.lane, self.offset = kafka, store, LiveAlerts(), 0

    def range(self, dog: bool = True) -> None:
        n = self.offset
        seen = [("dog", 0.9, (100, 100, 80, 60))] if dog else []
        found = landing_records([(f"cam-{n + i:06d}", START + timedelta(seconds=n + i), [] if i else seen)
                                 for i in range(2)])
        for i, record in enumerate(found):
            record.offset = n + i
        # The run's resources, as follow_frames has them: the rules as the settings say now.
        given = run_resources()
        with dg.build_op_context(resources={k: given[k] for k in ("tracking", "alert_rules")}) as context:
            self.lane(LandedRange(context, self.kafka, self.store, self.kafka.frames_topic, 0, n, n + 2, 0,
                                  lambda: iter(found), 1 << 20))
        self.offset += 2


def live_setup(tmp_path, kafka, monkeypatch, url: str, backoff: float, horizon: str = ""):
    (tmp_path / "alerts.yaml").write_text(DOG_RULES % {"url": url, "backoff": backoff, "horizon": horizon})
    monkeypatch.setenv("IMGPIPELINE_ALERTS_FILE", str(tmp_path / "alerts.yaml"))
    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    return store, Camera(kafka, store)


def test_a_refused_send_waits_a_doubling_pause_until_the_horizon():
    hook = Webhook(url="http://127.0.0.1:9/", backoff_s=1.0, retry_for_s=100)
    refused = Delivery(False, 4, "HTTP 503")
    first = next_retry(None, refused, hook, 1000.0)
    assert first == {"since": 1000.0, "rounds": 1, "tries": 4, "next_at": 1002.0, "reason": "HTTP 503"}
    second = next_retry(first, Delivery(False, 1, "HTTP 502"), hook, 1002.0)
    assert [second[k] for k in ("rounds", "tries", "next_at", "reason")] == [2, 5, 1006.0, "HTTP 502"]
    last = next_retry({**second, "rounds": 9}, refused, hook, 1050.0)
    assert last["next_at"] == 1100.0  # the last try falls on the horizon
    assert next_retry(second, refused, hook, 1100.0) is None  # past the horizon: dead-lettered
    assert next_retry(None, Delivery(False, 1, "HTTP 404 (final)", final=True), hook, 1000.0) is None
    assert next_retry(None, refused, Webhook(url="http://127.0.0.1:9/", retry_for_s=0), 1000.0) is None
    with pytest.raises(ValueError, match="retry_for_s"):
        Webhook(url="http://127.0.0.1:9/", retry_for_s=-1)


@pytest.mark.integration
def test_a_webhook_down_for_half_a_minute_gets_every_live_alert_once(tmp_path, kafka, monkeypatch):
    hook = Hook(until=time.monotonic() + 30)
    store, camera = live_setup(tmp_path, kafka, monkeypatch, hook.url, backoff=0.2)
    ledger = Ledger(store)
    try:
        while time.monotonic() < hook.until:  # alerts fire while the webhook is down
            camera.range()
            time.sleep(1.0)  # the camera's pace: a range a second (not a wait for an outcome)
        raised = sorted(int(m.key) for m in read_all(kafka, kafka.alerts_topic))
        assert len(raised) >= 10 and read_all(kafka, f"{kafka.alerts_topic}.dlq") == []  # none given up
        deadline = time.monotonic() + 120
        while hook.delivered() != raised:  # the webhook is back: later ranges (nothing to raise) retry
            assert time.monotonic() < deadline, f"undelivered: {sorted(set(raised) - set(hook.delivered()))}"
            camera.range(dog=False)
            time.sleep(0.5)  # the camera's pace
    finally:
        hook.close()
    refused = [r["body"]["number"] for r in hook.requests if r["status"] == 503]
    assert refused.count(raised[0]) >= 4  # the first alert was tried again and again through the outage
    assert all(ledger.deliveries(n)["ops"]["state"] == "delivered" for n in raised)
    assert ledger.retries() == [] and read_all(kafka, f"{kafka.alerts_topic}.dlq") == []
    # Delivered is delivered: nothing goes out again, whatever comes after.
    camera.range(dog=False)
    assert hook.delivered() == raised


@pytest.mark.integration
def test_an_alert_refused_past_the_horizon_is_dead_lettered_with_its_reason(tmp_path, kafka, monkeypatch):
    hook = Hook(until=float("inf"))
    store, camera = live_setup(tmp_path, kafka, monkeypatch, hook.url, 0.1, horizon=", retry_for_s: 2")
    ledger = Ledger(store)
    try:
        camera.range()
        (number,) = [int(m.key) for m in read_all(kafka, kafka.alerts_topic)]
        assert ledger.retrying(number, "ops")["reason"] == "HTTP 503"
        deadline = time.monotonic() + 60
        while ledger.sent(number, "ops") is None:
            assert time.monotonic() < deadline, ledger.retrying(number, "ops")
            camera.range(dog=False)
            time.sleep(0.2)  # the camera's pace: five ranges a second
    finally:
        hook.close()
    dead = ledger.sent(number, "ops")
    assert dead["state"] == "dead" and dead["reason"] == "HTTP 503"
    assert dead["attempts"] == len(hook.requests) > 2  # tried again later, before it was given up
    (letter,) = read_all(kafka, f"{kafka.alerts_topic}.dlq")
    assert letter.key == f"{number}-ops".encode() and dict(letter.headers)["reason"] == b"HTTP 503"
    assert ledger.retries() == []


@pytest.mark.integration
@pytest.mark.instance
def test_the_hourly_run_tries_again_what_a_webhook_refused(tmp_path, kafka, monkeypatch):
    ops, broken = Hook(failures=2), Hook(failures=1000)
    storage, resources = setup(tmp_path, kafka, (ops, broken), monkeypatch)
    # The scene's rules, the broken webhook's refusals tried again for the default hour, 2 s apart at first.
    retried = RULES.replace("backoff_s: 0.05, retry_for_s: 0", "backoff_s: 1")
    (tmp_path / "retried.yaml").write_text(retried % {"ops": ops.url, "broken": broken.url})
    resources["alert_rules"] = AlertsResource(alerts_file=str(tmp_path / "retried.yaml"))
    store = storage.open()
    records(store)
    ledger = Ledger(store)
    try:
        with fresh_instance() as instance:
            materialize([hourly_tables], *RANGE, resources, instance)
            first = materialize([alerts], *RANGE, resources, instance)
            assert read_all(kafka, f"{kafka.alerts_topic}.dlq") == []  # refused, not given up
            (waiting,) = ledger.retries()  # the bench alert: refused twice, kept, not dead-lettered
            number, tries = waiting["message"]["number"], waiting["tries"]
            # Its two attempts, and once more where the run lasted past the pause (its retries' pass at
            # the end: a slow machine's run of four clips takes longer than two seconds).
            assert waiting["target"] == "broken" and tries in (2, 3) and len(broken.requests) == tries
            assert ledger.sent(number, "broken") is None
            metadata = first.asset_materializations_for_node("alerts")[0].metadata
            assert metadata["webhook_sends_waiting"].value == 1
            broken.failures = len(broken.requests)  # it is back
            while time.time() < ledger.retrying(number, "broken")["next_at"]:
                time.sleep(0.1)  # its pause: two seconds
            materialize([alerts], RANGE[0], RANGE[0], resources, instance)  # an hour that is not the alert's
            delivered = ledger.sent(number, "broken")
            assert (delivered["state"], delivered["attempts"]) == ("delivered", tries + 1)
            materialize([alerts], *RANGE, resources, instance)
        # Delivered once, then never again.
        assert [r["body"]["number"] for r in broken.requests] == [number] * (tries + 1)
        assert ledger.retries() == [] and read_all(kafka, f"{kafka.alerts_topic}.dlq") == []
    finally:
        ops.close()
        broken.close()


def test_a_send_ended_by_a_run_stopped_before_it_forgot_the_retry_goes_out_no_more(tmp_path):
    hook = Hook()  # it would take the alert
    rules = parse(f'notify: {{ops: {{url: "{hook.url}"}}}}\nrules: [{{name: r, kind: dark, notify: [ops]}}]\n'
                  .encode())
    ledger = Ledger(StorageResource(uri=(tmp_path / "store").as_uri()).open())
    ledger.record_retry({"number": 5, "rule": "r"}, "ops",
                        {"since": 0.0, "rounds": 1, "tries": 4, "next_at": 0.0, "reason": "HTTP 503"})
    ledger.record_sent(5, "ops", "delivered", attempts=5)  # then the run was stopped
    try:
        assert retry_webhooks(None, ledger, rules, lambda env: None) == (
            {"delivered": 0, "dead": 0, "retrying": 0}, math.inf)
    finally:
        hook.close()
    assert hook.requests == [] and ledger.retries() == [] and ledger.sent(5, "ops")["attempts"] == 5


def test_a_webhook_that_refuses_is_tried_once_a_pass_whatever_waits_for_it(tmp_path):
    """Twenty alerts waiting for a webhook that refuses: a pass of retries asks it once, and the other
    nineteen wait their pause with the reason it gave (a webhook that hangs costs a pass one timeout, not
    one per alert); once it takes them, each is delivered once."""
    hook = Hook(until=time.monotonic() + 3600)
    rules = parse(f'notify: {{ops: {{url: "{hook.url}", retry_for_s: 3600}}}}\n'
                  'rules: [{name: r, kind: dark, notify: [ops]}]\n'.encode())
    ledger = Ledger(StorageResource(uri=(tmp_path / "store").as_uri()).open())
    for number in range(1, 21):
        ledger.record_retry({"number": number, "rule": "r"}, "ops",
                            {"since": time.time() - 10, "rounds": 1, "tries": 2, "next_at": 0.0,
                             "reason": "HTTP 503"})
    try:
        counts, due = retry_webhooks(None, ledger, rules, lambda env: None)
        assert counts == {"delivered": 0, "dead": 0, "retrying": 20} and len(hook.requests) == 1
        waiting = ledger.retries()
        assert len(waiting) == 20 and min(r["next_at"] for r in waiting) == due > time.time()
        assert {r["reason"] for r in waiting} >= {"HTTP 503 (to another alert just before: not tried again)"}
        hook.until = 0.0  # back
        for retry in waiting:
            ledger.record_retry(retry["message"], "ops", {**retry, "next_at": 0.0})
        assert retry_webhooks(None, ledger, rules, lambda env: None)[0]["delivered"] == 20
    finally:
        hook.close()
    assert hook.delivered() == list(range(1, 21)) and ledger.retries() == []


def test_retry_state_that_is_damaged_or_out_of_bounds_stops_nothing(tmp_path):
    """A pause never overflows nor falls to nothing; a damaged retry record is set aside for an operator
    and the others are retried; a next number that is no alert's is not believed."""
    from imgpipeline.defs.alerts.ledger import NEXT, ROOT

    eager = Webhook(url="http://127.0.0.1:9/", backoff_s=0, retry_for_s=7 * 86400)
    refused = Delivery(False, 1, "HTTP 503")
    far = next_retry({"since": 0.0, "rounds": 5000, "tries": 5000}, refused, eager, 10.0)
    assert far["rounds"] == 5001 and 10.0 < far["next_at"] <= 70.0
    assert next_retry(None, refused, eager, 10.0)["next_at"] >= 11.0

    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    ledger = Ledger(store)
    whole = {"since": 0.0, "rounds": 1, "tries": 1, "next_at": 0.0, "reason": "HTTP 503"}
    ledger.record_retry({"number": 1, "rule": "r"}, "ops", whole)
    store.put(f"{ROOT}/retrying/0000000002-ops.json", b"{not json")
    store.put(f"{ROOT}/retrying/0000000003-ops.json", json.dumps({"message": {"number": 3}}).encode())
    assert [r["message"]["number"] for r in ledger.retries()] == [1]
    assert sorted(store.list(f"{ROOT}/retrying-damaged/")) == [
        f"{ROOT}/retrying-damaged/0000000002-ops.json", f"{ROOT}/retrying-damaged/0000000003-ops.json"]
    assert store.list(f"{ROOT}/retrying/") == [f"{ROOT}/retrying/0000000001-ops.json"]

    for hint in (b'{"number": 1e999}', b'{"number": -5}', b'{"number": 99999999999}', b"[]", b"{"):
        store.put(NEXT, hint)
        assert Ledger(store).number(f"key-{hint!r}") >= 1
    numbers = [int(k.rsplit("/", 1)[1].split(".")[0]) for k in store.list(f"{ROOT}/numbers/")]
    assert sorted(numbers) == [1, 2, 3, 4, 5]
