"""Telling people: every alert to the Kafka topic `alerts` (keyed by its number), and per rule to webhooks
and e-mail (SMTP, the snapshot attached), each a "target" of the rules file's `notify:`.

Each notification is recorded in the ledger once it is acknowledged, so a second run over the same
alerts sends nothing. A webhook is tried `attempts` times with a doubling pause; an alert it still
refuses is kept in the ledger and tried again by later ranges of the live lane and later alerts runs,
once per try with a pause that doubles (from the webhook's `backoff_s`, at most `MAX_PAUSE_S`), until
the webhook's `retry_for_s` has passed since it first failed: only then is it dead-lettered to
`<alerts topic>.dlq` with the reason, and recorded as such (an answer that will not change, a 4xx other
than 408 and 429, or an SMTP 5xx, at once). Webhooks get no redirects (a token must not follow one to
another host) and their addresses are never logged: a webhook address often carries a secret.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate

from imgpipeline.defs.alerts.ledger import Ledger
from imgpipeline.redaction import redact
from imgpipeline.resources.storage import BadObject, Storage
from imgpipeline.vision.alert_rules import TOPIC_RECORD, Email
from imgpipeline.web.links import EvidenceLinks

KAFKA = TOPIC_RECORD  # an alert's publication, in the ledger beside its webhooks
# What the ledger keeps of an alert told on Kafka (no links: a signed one is a capability): the viewer lists
# an alert raised live from it before its hour's alerts are built (Ledger.latest_told).
TOLD = ("number", "rule", "kind", "severity", "source_id", "fired_at", "detail", "frame_id", "track_id",
        "class_name")
MAX_PAUSE_S = 60.0  # a webhook back from an outage hears of its waiting alerts within a minute
MIN_PAUSE_S = 1.0
MAX_INLINE_BYTES = 5 * 2**20  # a snapshot sent inline: at most this (base64 adds a third)


def payload(row: dict, viewer_url: str, store: Storage, links: EvidenceLinks | None = None) -> dict:
    """What an alert says to the world: never a secret, always where to look. `snapshot_url` and `clip_url`
    open the annotated frame and the clip in the viewer, signed for whoever holds them when `links` is given
    (web/links.py); the clip is there for a video or camera once the seconds after the alert are in."""
    number, now = row["number"], time.time()

    def evidence(name: str) -> str:
        path = f"/alerts/{number}/{name}"
        return viewer_url + (links.signed(path, now) if links else path)

    return {
        "number": number, "rule": row["rule"], "kind": row["kind"], "severity": row["severity"],
        "source_id": row["source_id"], "fired_at": row["fired_at"].isoformat().replace("+00:00", "Z"),
        "detail": row["detail"], "frame_id": row["frame_id"], "frame_ids": row["frame_ids"],
        "track_id": row["track_id"], "class_name": row["class_name"],
        "detection_index": row["detection_index"],
        "url": f"{viewer_url}/alerts/{number}",
        "annotated": store.uri(row["annotated_key"]) if row["annotated_key"] else None,
        "snapshot_url": evidence("annotated.jpg") if row["annotated_key"] else None,
        "clip_url": evidence("clip.webm"),
    }


def body(webhook, message: dict, store: Storage | None) -> bytes:
    """What a webhook is sent of an alert: its message, with the snapshot's JPEG when the webhook asks for it
    inline (left out when it cannot be read, or is larger than a frame may be); or, for a chat, a line that
    links the alert and its snapshot."""
    if webhook.format == "slack":
        return json.dumps(chat_message(message)).encode()
    if webhook.inline_snapshot:
        image = snapshot_of(message, store)
        message = {**message, "snapshot_jpeg": base64.b64encode(image).decode() if image else None}
    return json.dumps(message).encode()


def chat_message(message: dict) -> dict:
    """A Slack-style message (incoming webhooks: `text`, and `blocks` with the snapshot as an image)."""
    def plain(text) -> str:  # Slack's mrkdwn takes &, < and > as markup
        return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    text = (f"*{plain(message['severity'])}* alert #{message['number']} `{plain(message['rule'])}` on "
            f"{plain(message['source_id'])} at {plain(message['fired_at'])}: {plain(message['detail'])} "
            f"<{message['url']}|open it>")
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if message.get("snapshot_url"):
        blocks.append({"type": "image", "image_url": message["snapshot_url"],
                       "alt_text": f"alert {message['number']}: the frame with its detections"})
    return {"text": text, "blocks": blocks}


def publish(kafka, ledger: Ledger, messages: list[dict]) -> int:
    """Alerts not yet on the topic go there, keyed by number; each is recorded once the broker has it, with
    what it said (TOLD)."""
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
                               offset=metadata.offset, alert={k: message[k] for k in TOLD})
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
    final: bool = False  # an answer that sending again will not change


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
                return Delivery(False, attempt, reason + " (final)", final=True)
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            # Error text repeats the address, and a webhook's address carries its token.
            reason = redact(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", webhook.url, paths=False)
        if attempt < attempts:
            sleep(pause)
            pause *= 2
    return Delivery(False, attempts, reason)


def deliver(target, message: dict, store: Storage | None, token_of, key: str,
            attempts: int | None = None) -> Delivery:
    """One alert to one target: POSTed to a webhook, or mailed."""
    if isinstance(target, Email):
        secret = token_of(target.password_env) if target.password_env else None
        return mail(target, message, store, secret, key, attempts=attempts)
    secret = token_of(target.token_env) if target.token_env else None
    return post(target, body(target, message, store), secret, key, attempts=attempts)


def mail(email: Email, message: dict, store: Storage | None, password: str | None, key: str,
         sleep=time.sleep, attempts: int | None = None) -> Delivery:
    """The alert as an e-mail, with its snapshot attached, until the server takes it, at most `attempts`
    times; a 5xx answer is final. The password never appears in a reason."""
    letter = letter_of(email, message, store, key)
    reason, pause = "", email.backoff_s
    attempts = attempts or email.attempts
    for attempt in range(1, attempts + 1):
        try:
            send_letter(email, letter, password)
            return Delivery(True, attempt)
        except smtplib.SMTPAuthenticationError as exc:  # a password changed: tried again until the horizon
            reason = f"SMTP {exc.smtp_code}: the login was refused (the user, or the password's variable)"
        except UnicodeError:  # smtplib sends the login as ASCII; its error would quote the password
            return Delivery(False, attempt, "the login is not ASCII, which SMTP cannot send (final)",
                            final=True)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            reason = f"SMTP {', '.join(map(str, codes))}: every recipient refused"
            if all(500 <= code < 600 for code in codes):
                return Delivery(False, attempt, reason + " (final)", final=True)
        except smtplib.SMTPResponseException as exc:
            reason = f"SMTP {exc.smtp_code}: {exc.smtp_error[:200]!r}"
            if 500 <= exc.smtp_code < 600:
                return Delivery(False, attempt, reason + " (final)", final=True)
        except (smtplib.SMTPException, OSError) as exc:
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        if attempt < attempts:
            sleep(pause)
            pause *= 2
    return Delivery(False, attempts, reason)


def letter_of(email: Email, message: dict, store: Storage | None, key: str) -> EmailMessage:
    """The e-mail of an alert: a subject that says what and where, the links, the snapshot attached."""
    letter = EmailMessage()
    letter["Subject"] = (f"[{message['severity']}] alert #{message['number']}: {message['rule']} on "
                         f"{message['source_id']}")
    letter["From"], letter["To"] = email.sender, ", ".join(email.to)
    letter["Date"] = formatdate(usegmt=True)
    letter["Message-ID"] = f"<{key}@imgpipeline>"  # the same for a send made again
    lines = [f"{message['detail']}", f"at {message['fired_at']} on {message['source_id']}", "",
             f"The alert: {message['url']}"]
    links = (("Its snapshot", "snapshot_url"), ("Its clip", "clip_url"))
    lines += [f"{what}: {message[field]}" for what, field in links if message.get(field)]
    letter.set_content("\n".join(lines) + "\n")
    image = snapshot_of(message, store)
    if image is not None:
        letter.add_attachment(image, maintype="image", subtype="jpeg",
                              filename=f"alert-{message['number']}.jpg")
    return letter


def send_letter(email: Email, letter: EmailMessage, password: str | None) -> None:
    """One attempt, cut at `timeout_s` in all (a server that answers a byte at a time holds it no longer:
    smtplib's timeout is per socket operation)."""
    host, port = email.address()
    context = ssl.create_default_context()
    if email.security == "tls":
        server = smtplib.SMTP_SSL(timeout=email.timeout_s, context=context)
    else:
        server = smtplib.SMTP(timeout=email.timeout_s)
    ran_out = threading.Event()
    watchdog = threading.Timer(email.timeout_s, cut, [server, ran_out])
    watchdog.start()
    try:
        with server:
            server.connect(host, port)
            if email.security == "starttls":
                server.starttls(context=context)
            if email.user:
                server.login(email.user, password or "")
            server.send_message(letter)
    except (smtplib.SMTPException, OSError):
        if ran_out.is_set():  # the error is the cut's, whatever the blocked call made of it
            raise TimeoutError(f"the SMTP server took more than {email.timeout_s:g} s") from None
        raise
    finally:
        watchdog.cancel()


def cut(server: smtplib.SMTP, ran_out: threading.Event) -> None:
    """End an attempt that ran out of time: said first (the watchdog's thread may still be alive when
    the blocked call fails, on a busy machine), then the socket shut, the call blocked on it fails."""
    ran_out.set()
    sock = getattr(server, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def snapshot_of(message: dict, store: Storage | None) -> bytes | None:
    """The alert's annotated frame, when it can be read and is no larger than MAX_INLINE_BYTES."""
    if store is None or not message.get("annotated"):
        return None
    return readable(store, message["annotated"], MAX_INLINE_BYTES)


def readable(store: Storage, uri: str, max_bytes: int) -> bytes | None:
    """An image sent along with a notification: its bytes, or None when it cannot be read (gone, outside
    the storage root, too large): the notification goes without it."""
    try:
        return store.get(store.key_for(uri), max_bytes=max_bytes)
    except (BadObject, OSError):
        return None


def notify_webhooks(kafka, ledger: Ledger, rules, messages: list[dict], token_of,
                    down: set[str] | None = None, store: Storage | None = None) -> dict[str, int]:
    """Each alert to its rule's webhooks, once; refusals kept for a retry, or dead-lettered past the
    webhook's retry horizon. Counts per outcome.

    A webhook that failed in this run gets one try per further alert (its retries would only hold the run
    up while it is down): a run's time on a dead webhook is one retry sequence. `down`: the webhooks that
    failed before, kept by a caller that notifies again and again (the live lane, range after range),
    until one delivers. `store`: where a snapshot sent inline is read."""
    sends = [(m, target) for m in messages for target in rules.rule(m["rule"]).notify]
    return _deliver(kafka, ledger, rules, sends, token_of, set() if down is None else down, store)[0]


def retry_webhooks(kafka, ledger: Ledger, rules, token_of, down: set[str] | None = None,
                   store: Storage | None = None) -> tuple[dict[str, int], float]:
    """The refused sends whose pause is over, tried once more each (of any hour, raised by any run).
    Counts per outcome, and when the first send still waiting is due (inf: none waits)."""
    sends = []
    for retry in ledger.retries():
        if ledger.sent(retry["message"]["number"], retry["target"]) is None:
            sends.append((retry["message"], retry["target"]))
        else:  # it ended, and the run that ended it was stopped before it forgot it
            ledger.forget_retry(retry["message"]["number"], retry["target"])
    return _deliver(kafka, ledger, rules, sends, token_of, set() if down is None else down, store)


def next_retry(before: dict | None, delivery: Delivery, webhook, now: float) -> dict | None:
    """When to try a refused send again, or None to dead-letter it: a final answer, or the webhook's
    retry horizon passed since the send first failed. The last try falls on the horizon."""
    since = before["since"] if before else now
    if delivery.final or now - since >= webhook.retry_for_s:
        return None
    rounds = before["rounds"] + 1 if before else 1
    # The exponent bounded (2 ** 1024 overflows a float) and the pause a second at least (a backoff_s of
    # 0 would retry at every pass).
    pause = min(max(webhook.backoff_s * 2 ** min(rounds, 32), MIN_PAUSE_S), MAX_PAUSE_S)
    return {"since": since, "rounds": rounds, "tries": (before["tries"] if before else 0) + delivery.attempts,
            "next_at": min(now + pause, since + webhook.retry_for_s), "reason": delivery.reason}


def _deliver(kafka, ledger: Ledger, rules, sends, token_of, down: set[str],
             store: Storage | None = None) -> tuple[dict[str, int], float]:
    """Each send not made yet, whose pause (if it was refused before) is over; counts per outcome, and
    when the first send still waiting is due."""
    counts = {"delivered": 0, "dead": 0, "retrying": 0}
    letters, due = [], math.inf
    refused: dict[str, str] = {}  # webhooks that refused in this pass, and why: tried once, the rest wait
    for message, target in sends:
        outcome, detail = _send(ledger, rules, message, target, token_of, down, time.time(), refused, store)
        if outcome == "dead":
            letters.append(detail)
        elif outcome == "retrying":
            due = min(due, detail)
        if outcome is not None:
            counts[outcome] += 1
    if letters:
        dead_letter(kafka, ledger, letters)
    return counts, due


def _send(ledger: Ledger, rules, message: dict, target: str, token_of, down: set[str], now: float,
          refused: dict[str, str], store: Storage | None = None):
    """One alert to one webhook: (None, None) when that was done before; ("delivered", None); ("retrying",
    when it is due); ("dead", the letter to send). A webhook in `refused` (it refused an alert moments
    before, in this pass) is not tried again: the send waits as if refused, so that a webhook that hangs
    costs a pass one timeout, not one per alert."""
    number = message["number"]
    if ledger.sent(number, target) is not None:
        return None, None
    retry = ledger.retrying(number, target)
    if retry is not None and retry["next_at"] > now:
        return "retrying", retry["next_at"]  # its pause is not over
    webhook = rules.spec.notify.get(target)
    if webhook is None:  # a webhook taken out of the rules file while its alert waited
        return "dead", (message, target, Delivery(False, 0, "webhook no longer in the rules file"), retry)
    if target in refused and webhook.retry_for_s > 0:  # kept for later (without retries: one try each)
        delivery = Delivery(False, 0, f"{refused[target]} (to another alert just before: not tried again)")
    else:
        delivery = deliver(webhook, message, store, token_of, f"imgpipeline-alert-{number}-{target}",
                           attempts=1 if target in down or retry is not None else None)
    tries = (retry["tries"] if retry else 0) + delivery.attempts
    if delivery.delivered:
        ledger.record_sent(number, target, "delivered", attempts=tries)
        if retry is not None:
            ledger.forget_retry(number, target)
        down.discard(target)
        return "delivered", None
    down.add(target)
    if not delivery.final:  # a final answer is about this alert alone
        refused.setdefault(target, delivery.reason)
    later = next_retry(retry, delivery, webhook, now)
    if later is None:
        return "dead", (message, target, Delivery(False, tries, delivery.reason), retry)
    ledger.record_retry(message, target, later)
    return "retrying", later["next_at"]


def dead_letter(kafka, ledger: Ledger, letters: list[tuple]) -> None:
    """Refused sends to `<alerts topic>.dlq` with their reason, recorded dead (and no longer retried)."""
    producer = kafka.producer()
    try:
        for message, target, delivery, retry in letters:
            producer.send(f"{kafka.alerts_topic}.dlq", key=f"{message['number']}-{target}".encode(),
                          value=json.dumps(message).encode(),
                          headers=[("reason", delivery.reason.encode()), ("target", target.encode())]
                          ).get(timeout=30)
            ledger.record_sent(message["number"], target, "dead", attempts=delivery.attempts,
                               reason=delivery.reason)
            if retry is not None:
                ledger.forget_retry(message["number"], target)
    finally:
        producer.close()
