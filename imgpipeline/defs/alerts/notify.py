"""Telling people: every alert to the Kafka topic `alerts` (keyed by its number), and per rule to webhooks.

Each notification is recorded in the ledger once it is acknowledged, so a second run over the same
alerts sends nothing. A webhook is tried `attempts` times with a doubling pause; an alert it still
refuses is dead-lettered to `<alerts topic>.dlq` with the reason, and recorded as such. Webhooks get no
redirects (a token must not follow one to another host) and their addresses are never logged: a
webhook address often carries a secret.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from imgpipeline.defs.alerts.ledger import Ledger
from imgpipeline.redaction import redact

KAFKA = "kafka"


def payload(row: dict, viewer_url: str, store) -> dict:
    """What an alert says to the world: never a secret, always where to look."""
    return {
        "number": row["number"], "rule": row["rule"], "kind": row["kind"], "severity": row["severity"],
        "source_id": row["source_id"], "fired_at": row["fired_at"].isoformat().replace("+00:00", "Z"),
        "detail": row["detail"], "frame_id": row["frame_id"], "frame_ids": row["frame_ids"],
        "track_id": row["track_id"], "class_name": row["class_name"],
        "detection_index": row["detection_index"],
        "url": f"{viewer_url}/alerts/{row['number']}",
        "annotated": store.uri(row["annotated_key"]) if row["annotated_key"] else None,
    }


def publish(kafka, ledger: Ledger, messages: list[dict]) -> int:
    """Alerts not yet on the topic go there, keyed by number; each is recorded once the broker has it."""
    waiting = [m for m in messages if ledger.sent(m["number"], KAFKA) is None]
    if not waiting:
        return 0
    producer = kafka.producer()
    try:
        futures = [(m, producer.send(kafka.alerts_topic, key=str(m["number"]).encode(),
                                     value=json.dumps(m).encode())) for m in waiting]
        producer.flush()
        for message, future in futures:
            metadata = future.get(timeout=30)
            ledger.record_sent(message["number"], KAFKA, "delivered", partition=metadata.partition,
                               offset=metadata.offset)
    finally:
        producer.close()
    return len(waiting)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # a 3xx is an answer, not an invitation to send the token elsewhere


_OPENER = urllib.request.build_opener(_NoRedirects)


@dataclass
class Delivery:
    delivered: bool
    attempts: int
    reason: str = ""


def post(webhook, body: bytes, token: str | None, idempotency_key: str, sleep=time.sleep,
         attempts: int | None = None) -> Delivery:
    """POST the body until the webhook answers 2xx, at most `attempts` times (the webhook's own number
    unless given); a 4xx other than 408 and 429 is final (sending the same alert again will not change
    the answer)."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key,
               "User-Agent": "imgpipeline-alerts"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    reason, pause = "", webhook.backoff_s
    attempts = attempts or webhook.attempts
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(webhook.url, data=body, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=webhook.timeout_s) as response:
                response.read(65536)
                return Delivery(True, attempt)
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
            if 300 <= exc.code < 500 and exc.code not in (408, 429):
                return Delivery(False, attempt, reason + " (final)")
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            # Error text repeats the address, and a webhook's address carries its token.
            reason = redact(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", webhook.url, paths=False)
        if attempt < attempts:
            sleep(pause)
            pause *= 2
    return Delivery(False, attempts, reason)


def notify_webhooks(kafka, ledger: Ledger, rules, messages: list[dict], token_of,
                    down: set[str] | None = None) -> dict[str, int]:
    """Each alert to its rule's webhooks, once; refusals dead-lettered. Counts per outcome.

    A webhook that failed for good in this run gets one try per further alert (its retries would only
    hold the run up while it is down): a run's time on a dead webhook is one retry sequence. `down`: the
    webhooks that failed for good before, kept by a caller that notifies again and again (the live lane,
    range after range), until one delivers."""
    counts = {"delivered": 0, "dead": 0}
    letters, down = [], set() if down is None else down
    for message in messages:
        for target in rules.rule(message["rule"]).notify:
            if ledger.sent(message["number"], target) is not None:
                continue
            webhook = rules.spec.notify[target]
            token = token_of(webhook.token_env) if webhook.token_env else None
            delivery = post(webhook, json.dumps(message).encode(), token,
                            f"imgpipeline-alert-{message['number']}-{target}",
                            attempts=1 if target in down else None)
            if delivery.delivered:
                ledger.record_sent(message["number"], target, "delivered", attempts=delivery.attempts)
                counts["delivered"] += 1
                down.discard(target)
            else:
                letters.append((message, target, delivery))
                down.add(target)
    if letters:
        producer = kafka.producer()
        try:
            for message, target, delivery in letters:
                producer.send(f"{kafka.alerts_topic}.dlq", key=f"{message['number']}-{target}".encode(),
                              value=json.dumps(message).encode(),
                              headers=[("reason", delivery.reason.encode()), ("target", target.encode())]
                              ).get(timeout=30)
                ledger.record_sent(message["number"], target, "dead", attempts=delivery.attempts,
                                   reason=delivery.reason)
                counts["dead"] += 1
        finally:
            producer.close()
    return counts
