"""The MQTT bridge: camera images published to MQTT become frames on Kafka, none lost, none twice.

Each message's payload is an image. The bridge stores it under `frames/` (the claim check) and sends
the frame message to Kafka with `acks=all`, like every producer; only once Kafka has acknowledged it
does it acknowledge the MQTT message (QoS 1, a persistent session, manual acknowledgement). A bridge
killed mid-stream loses nothing: the broker delivers what was not acknowledged again. A redelivery
lands once: a frame's id is derived from its bytes, its capture time is the one first given to it
(kept in a journal written before the frame is sent), and the producer's ledger knows what Kafka
acknowledged. A frame sent but not yet recorded when the bridge died goes out again as the very same
message, which the warehouse keeps once.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from imgpipeline import ConfigError
from imgpipeline.ingest.messages import FRAME_ID, iso_utc, parse_time, sha256_hex
from imgpipeline.ingest.producer import (
    Frame,
    FrameProducer,
    append_lines,
    day_of,
    ledger_for,
    modified_day,
    read_day_lines,
    write_lines,
)

# A journal time as iso_utc writes it, whole; a day file's name.
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
DAY_FILE = re.compile(r"\d{4}-\d\d-\d\d\Z")
TOPIC_FILTER = re.compile(r"^[^#+]*(\+[^#+]*)*(#)?\Z")
# After a batch some of which Kafka did not take, the bridge connects again after this pause, doubled
# while it goes on failing.
RECONNECT_FIRST_S, RECONNECT_MAX_S = 1.0, 30.0
# Before it disconnects, the bridge unsubscribes from SETTLE_FILTER (a filter no one subscribes to)
# and waits up to SETTLE_S for the answer: proof the broker read the acknowledgements sent before it.
SETTLE_FILTER, SETTLE_S = "imgpipeline/bridge-settled", 10.0


def source_of(topic: str, topic_filter: str, fixed: str | None) -> str:
    """The source id of a message: the configured one, else the topic level the filter's first `+`
    stands for (`cameras/+/frames` on `cameras/cam7/frames` gives cam7)."""
    if fixed:
        return fixed
    levels, wanted = topic.split("/"), topic_filter.split("/")
    for level, pattern in zip(levels, wanted, strict=False):
        if pattern == "+":
            return level
    raise ConfigError(f"topic {topic_filter!r} names no source: give --source or a `+` level")


class Journal:
    """The capture time first given to each frame id, appended before the frame is sent to today's file
    (UTC) in `<path>.days/`. When the day changes, the days before yesterday are folded into one file,
    `<path>.window`, keeping only the entries of the last `days` days (written aside and renamed over it,
    then the folded day files deleted), so start-up reads three files however long the bridge has run, and
    memory and disk hold the window only (yesterday's file is left alone: a bridge of the same source still
    running across midnight may be appending to it); a message delivered again after it is a new frame with
    a new time.
    A journal of one file (`<path>`, written before it was kept by day) is read while it was last written
    within those days."""

    def __init__(self, path: Path, days: int = 7, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.path, self.days, self.clock = path, days, clock
        self.days_dir = path.with_name(path.name + ".days")
        self.window_file = path.with_name(path.name + ".window")
        self.times: dict[str, str] = {}
        self._window: tuple[str, ...] = ()

    def captured(self, frame_id: str) -> datetime:
        now = self.clock()
        self._read_window(now)
        when = self.times.get(frame_id)
        if when is None:
            when = self.times[frame_id] = iso_utc(now)
            append_lines(self.days_dir / day_of(now), [f"{frame_id} {when}"], sync=True)
        return parse_time(when)

    def _read_window(self, now: datetime) -> None:
        """The journal's days in memory: read again when the day changes (the days before folded)."""
        window = tuple(day_of(now - timedelta(days=n)) for n in range(self.days))
        if window == self._window:
            return
        entries = self._fold(before=window[1] if self.days > 1 else window[0], oldest=window[-1])
        if self.path.is_file() and modified_day(self.path) >= window[-1]:
            entries = read_day_lines(self.path, ISO_UTC) + entries
        recent = [self.days_dir / day for day in reversed(window[:2])]
        times: dict[str, str] = {}
        for frame_id, when in entries + [entry for day in recent for entry in read_day_lines(day, ISO_UTC)]:
            if when[:10] >= window[-1]:
                times.setdefault(frame_id, when)
        self._window, self.times = window, times

    def _fold(self, before: str, oldest: str) -> list[tuple[str, str]]:
        """The entries of the window's days before `before`, from the window file and the day files not yet
        folded into it (all of them after a fold cut short); those day files folded in and deleted."""
        days = sorted(p for p in self.days_dir.glob("*")
                      if DAY_FILE.match(p.name) and p.name < before and p.is_file())
        folded = read_day_lines(self.window_file, ISO_UTC)
        entries, seen = [], set()
        for frame_id, when in folded + [entry for day in days for entry in read_day_lines(day, ISO_UTC)]:
            if when[:10] >= oldest and frame_id not in seen:
                seen.add(frame_id)
                entries.append((frame_id, when))
        if days or len(entries) < len(folded):
            write_lines(self.window_file, [f"{frame_id} {when}" for frame_id, when in entries])
            for day in days:
                day.unlink(missing_ok=True)
        return entries


@dataclass
class Received:
    mid: int
    topic: str
    topic_filter: str
    payload: bytes
    connection: int  # the connection that delivered it: a packet id names this message on that one only


class Refused(Exception):
    """A message that cannot become a frame; str(exc) is the reason its dead letter gives."""


class MqttBridge:
    """Subscribes, stores and sends, then acknowledges; `run` until stopped or `limit` messages.

    A message is acknowledged only once it is settled: its frame acknowledged by Kafka, or its dead letter
    (a payload over the size limit, a topic level that is no source id) acknowledged by Kafka. A frame
    Kafka did not take (broker away past the delivery timeout, a missing permission) is not acknowledged:
    the bridge connects again, after a pause, and the MQTT broker delivers it again. Acknowledgements go
    to the connection that delivered the message only: packet ids start over on a new connection.
    """

    def __init__(self, kafka, storage, topics: list[str], *, letter, source: str | None = None,
                 client_id: str = "imgpipeline-bridge", settings=None, batch: int = 25, log=print):
        for topic in topics:
            if not topic or not TOPIC_FILTER.match(topic):
                raise ConfigError(f"{topic!r} is not an MQTT topic filter")
            if not source and "+" not in topic.split("/"):
                raise ConfigError(f"topic {topic!r} has no `+` level to take the source id from: give "
                                  "--source")
        if source and not FRAME_ID.match(source):
            raise ConfigError(f"--source {source!r} is not a source id ({FRAME_ID.pattern})")
        self.kafka, self.storage, self.topics, self.source = kafka, storage, topics, source
        self.client_id, self.batch, self.log = client_id, batch, log
        self.settings = settings  # resources.mqtt.MqttSettings: the broker, the login, TLS, the payload limit
        # (topic, payload, reason, sender) → the dead letter's (key, value): the run path's format, which
        # the code location owns (cli.bridge.mqtt_letter)
        self.letter = letter
        self.inbox: queue.Queue[Received] = queue.Queue()
        self.settled = threading.Event()  # the subscriptions confirmed, or `failure` says why not
        self.answered, self.failure = False, None
        self.producers: dict[str, FrameProducer] = {}
        self.letters = None  # the producer of the bridge's own dead letters, opened on the first
        self.forwarded = 0
        # Counts connections and their ends, so a message of an earlier connection is known as such; the
        # lock keeps an acknowledgement from going out once the connection that delivered it is gone.
        self.connection, self.connection_lock = 0, threading.Lock()
        # Monotonic times of this run's first message taken and of Kafka's acknowledgement of its last.
        self.first_at: float | None = None
        self.acked_at: float | None = None

    def _fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
        self.settled.set()

    def _next_connection(self) -> None:
        with self.connection_lock:
            self.connection += 1

    def _client(self):
        import paho.mqtt.client as mqtt

        client = self.settings.client(self.client_id, clean_session=False, manual_ack=True)

        def on_connect(client, userdata, flags, reason_code, properties):
            self.answered = True
            if reason_code.is_failure:
                self._fail(self.settings.refusal(reason_code))
                return
            self._next_connection()
            client.subscribe([(topic, 1) for topic in self.topics])

        def on_disconnect(client, userdata, flags, reason_code, properties):
            self._next_connection()
            if not self.answered:  # e.g. a TLS listener that got no TLS
                self._fail(self.settings.closed_early(reason_code))

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            if any(code.is_failure for code in reason_codes):
                self._fail(f"the MQTT broker at {self.settings.broker} refused the subscription to "
                           f"{', '.join(self.topics)} ({', '.join(map(str, reason_codes))}): may this login "
                           "read those topics?")
            else:
                self.settled.set()

        def on_message(client, userdata, message):
            topic_filter = next((t for t in self.topics if mqtt.topic_matches_sub(t, message.topic)), "")
            self.inbox.put(Received(message.mid, message.topic, topic_filter, bytes(message.payload),
                                    self.connection))

        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        client.on_subscribe, client.on_message = on_subscribe, on_message
        return client

    def _connect(self):
        """A connected client whose subscriptions the broker confirmed; ConfigError says what to fix."""
        self.answered, self.failure = False, None
        self.settled.clear()
        client = self._client()
        self.settings.connect(client)
        client.loop_start()
        if not self.settled.wait(30):
            client.loop_stop()
            raise ConfigError(f"the MQTT broker at {self.settings.broker} did not confirm the "
                              f"subscriptions to {', '.join(self.topics)} within 30 s")
        if self.failure:
            client.loop_stop()
            raise ConfigError(self.failure)
        return client

    def _disconnect(self, client) -> None:
        """End the connection once the broker has read every acknowledgement sent on it. The broker reads
        a connection's packets in order, so the answer to an UNSUBSCRIBE (of a filter this client never
        subscribes) comes after them. Without that wait, a bridge that connects again at once can be
        taken for the same client before the broker read the last acknowledgements: it drops the old
        connection unread and delivers those messages again."""
        if client.is_connected():
            answered = threading.Event()
            client.on_unsubscribe = lambda *args: answered.set()
            rc, _ = client.unsubscribe(SETTLE_FILTER)
            if rc == 0 and not answered.wait(SETTLE_S):
                self.log(f"bridge: the MQTT broker at {self.settings.broker} did not answer within "
                         f"{SETTLE_S:g} s; what it did not read of the last acknowledgements comes again")
        client.loop_stop()
        client.disconnect()
        self._next_connection()  # whatever that connection delivered is not acknowledged any more

    def run(self, limit: int | None = None, idle_s: float | None = None, ready=None) -> int:
        """Forward messages until `limit` were acknowledged or nothing came for `idle_s` seconds; `ready` is
        called once the broker confirmed the subscriptions (from then on nothing published is missed).
        A broker that refuses the login, the TLS handshake or the subscriptions raises a ConfigError that
        says what to fix."""
        self.producers, self.journals, self.forwarded = {}, {}, 0
        self.first_at = self.acked_at = None
        client = self._connect()
        pause = RECONNECT_FIRST_S
        try:
            if ready is not None:
                ready()
            last = time.monotonic()
            while limit is None or self.forwarded < limit:
                if self.failure:  # refused when it connected again
                    raise ConfigError(self.failure)
                taken = self._take()
                if not taken:
                    if idle_s is not None and time.monotonic() - last > idle_s:
                        break
                    continue
                last = time.monotonic()
                self.first_at = self.first_at or last
                if self._forward(client, taken):
                    self.acked_at, pause = time.monotonic(), RECONNECT_FIRST_S
                    continue
                # What Kafka did not take waits in the MQTT session; a broker sends it again only to a new
                # connection.
                self.log(f"bridge: connecting to the MQTT broker again in {pause:g} s, to be sent what is "
                         "not acknowledged")
                self._disconnect(client)
                time.sleep(pause)
                pause = min(RECONNECT_MAX_S, pause * 2)
                client = self._connect()
                last = time.monotonic()
        finally:
            for producer in self.producers.values():
                producer.close()
            if self.letters is not None:
                self.letters.close()
                self.letters = None
            self._disconnect(client)
        return self.forwarded

    def _take(self) -> list[Received]:
        taken = []
        try:
            taken.append(self.inbox.get(timeout=0.2))
            while len(taken) < self.batch:
                taken.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        return taken

    def _frame(self, message: Received) -> tuple[str, Frame]:
        """The source and frame of a message; Refused says why it can be none (its dead letter's reason)."""
        from imgpipeline.vision.quality import UndecodableImage, header_size

        limit = self.settings.max_payload_bytes
        if len(message.payload) > limit:
            raise Refused(f"payload of {len(message.payload):,} bytes is over the bridge's limit "
                          f"({self.settings.env_setting('max_payload_bytes')})")
        source = source_of(message.topic, message.topic_filter, self.source)
        if not FRAME_ID.match(source):
            raise Refused(f"topic {message.topic!r}: the level {source!r} is not a source id "
                          f"({FRAME_ID.pattern})")
        try:
            width, height = header_size(message.payload)
        except UndecodableImage:
            width = height = None  # not an image: the run says so (an error record and a dead letter)
        digest = sha256_hex(message.payload)
        frame_id = f"{source}-{digest[:20]}"
        if source not in self.journals:
            self.journals[source] = Journal(ledger_for(self.kafka.frames_topic, source).path
                                            .with_suffix(".captured"), days=self.settings.journal_days)
        captured = self.journals[source].captured(frame_id)
        return source, Frame(frame_id, message.payload, captured, width, height)

    def _forward(self, client, taken: list[Received]) -> bool:
        """Send a batch on and acknowledge what is settled; False when some of it waits for Kafka and must be
        delivered again (to a new connection)."""
        current = [m for m in taken if m.connection == self.connection]
        if len(current) < len(taken):
            self.log(f"bridge: {len(taken) - len(current)} messages came on an earlier connection; not "
                     "acknowledged there, the broker delivers them again")
        done, letters, frames = [], [], []
        for message in current:
            if not message.topic_filter:
                # The persistent session kept a subscription of an earlier run with other --topic
                # values: nothing of this run asked for it, so it is acknowledged and dropped.
                self.log(f"bridge: topic {message.topic!r} matches none of {', '.join(self.topics)} "
                         "(a subscription kept from an earlier run); dropped")
                done.append(message)
                continue
            try:
                source, frame = self._frame(message)
            except Refused as why:
                letters.append((message, str(why)))
                continue
            producer = self.producers.get(source)
            if producer is None:
                producer = self.producers[source] = FrameProducer(self.kafka, self.storage, source)
            producer.send(frame)
            frames.append((message, frame.frame_id))
        outcomes = {o.frame_id: o for producer in self.producers.values() for o in producer.flush()}
        waiting = 0
        for message, frame_id in frames:
            outcome = outcomes[frame_id]
            if outcome.failure is None:
                done.append(message)
            elif outcome.permanent:
                letters.append((message, outcome.failure))
            else:
                self.log(f"bridge: {frame_id} from {message.topic!r} not acknowledged: {outcome.failure}")
                waiting += 1
        settled, unsent = self._dead_letter(letters)
        for message in done + settled:
            self._ack(client, message)
        # Messages of an earlier connection need no new one: the current connection was sent them again.
        return not (waiting or unsent)

    def _dead_letter(self, letters: list[tuple[Received, str]]) -> tuple[list[Received], int]:
        """Send each message's dead letter to `<frames topic>.dlq`; the messages whose letter Kafka
        acknowledged, and how many it did not."""
        if not letters:
            return [], 0
        if self.letters is None:
            self.letters = self.kafka.producer()
        sent = []
        for message, reason in letters:
            self.log(f"bridge: message on {message.topic!r} ({len(message.payload):,} bytes) dead-lettered: "
                     f"{reason}")
            key, value = self.letter(message.topic, message.payload, reason, f"mqtt-bridge {self.client_id}")
            sent.append((message, self.letters.send(self.kafka.dlq_topic, key=key, value=value)))
        self.letters.flush(timeout=self.kafka.delivery_bound_s)
        acknowledged = [message for message, future in sent if future.succeeded()]
        if len(acknowledged) < len(sent):
            self.log(f"bridge: {len(sent) - len(acknowledged)} dead letters not acknowledged by Kafka; their "
                     "messages wait in the MQTT session")
        return acknowledged, len(sent) - len(acknowledged)

    def _ack(self, client, message: Received) -> None:
        with self.connection_lock:
            if message.connection == self.connection:
                client.ack(message.mid, 1)
                self.forwarded += 1
