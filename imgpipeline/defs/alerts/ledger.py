"""Alert numbers and deliveries, kept in storage: a number is given once, to one alert, forever.

An alert is known by its key (what happened: rule, source, frame, track); the ledger gives each key the
next free number and remembers which notifications went out, so an hour made again, a replay or a
backfill finds the same numbers and notifies nobody twice.

    alerts/ledger/numbers/<number>.json   the key (and occurrence) a number was claimed for (put-if-absent)
    alerts/ledger/next.json   where the search for a free number starts: past the last number claimed
    alerts/ledger/keys/<sha256 of key>.json   the number given to the key (created once: put-if-absent)
    alerts/ledger/occurrences/<sha256>.json   the number given to an alert about one object (created once)
    alerts/ledger/claims/<sha256>.json   the number a run claims for a key (or occurrence), before it does
    alerts/ledger/sent/<number>/<target>.json   a notification that went out (or was dead-lettered); Kafka's
        with what the alert said, so an alert raised live is known before its hour's alerts are built
    alerts/ledger/retrying/<number>-<target>.json   a webhook send that failed, with when to try it again

Numbers are written zero-padded to ten digits. A number is claimed by creating its file only if it
does not exist, so two runs never take one number; the key is then bound to it the same way, so two
runs racing for one key agree on the number that was bound first (the other claim stays unused and is
never given again). A run writes which number it is claiming before it claims it, so a run killed
between the claim and the binding finds its own claim again instead of taking a second number.
A track rule's alert about one detected object is also known by its occurrence: its key with the
detection's index in the frame instead of the track id. An hour built again can give the same object
another id (a late range made the tracker see frames it had not), and ids are times of confirmation,
so another object can even take the id the first had: the occurrence's number wins over the key's, the
alert keeps its number and is told once, and a key whose number is another object's (its number file
names another occurrence) claims a new one. The occurrence is bound before the key, so a run killed
between the two binds the key to it when run again.
Numbering costs the same however many numbers were given: a run starts from `next.json` (a hint, written
after each claim; a run writing it late only makes the next run find a number or two taken), and a store
from before it is listed once.
Alerts runs are also one at a time (the `alerts` concurrency pool, dagster.yaml), so two runs do not
notify the same alert at once.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from imgpipeline.resources.storage import BadObject, Storage
from imgpipeline.vision.alert_rules import TOPIC_RECORD

ROOT = "alerts/ledger"
NEXT = f"{ROOT}/next.json"
MAX_NUMBER = 10**10  # numbers are written in ten digits


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def retry_problem(record) -> str | None:
    """What makes a retry record unusable (None: it is whole)."""
    if not isinstance(record, dict) or not isinstance(record.get("message"), dict):
        return "not a retry record"
    number = record["message"].get("number")
    if not _counted(number) or not 0 < number < MAX_NUMBER or not isinstance(record.get("target"), str):
        return "no alert number or target"
    if not all(_counted(record.get(f)) or isinstance(record.get(f), float) for f in ("since", "next_at")):
        return "no times"
    if not all(_counted(record.get(f)) for f in ("rounds", "tries")):
        return "no counts"
    return None


def _counted(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Ledger:
    def __init__(self, store: Storage):
        self.store = store
        self._next: int | None = None

    def _key_file(self, key: str) -> str:
        return f"{ROOT}/keys/{_digest(key.encode())}.json"

    def _claim_file(self, key: str) -> str:
        return f"{ROOT}/claims/{_digest(key.encode())}.json"

    @staticmethod
    def number_file(number: int) -> str:
        return f"{ROOT}/numbers/{number:010d}.json"

    def _read(self, name: str) -> dict | None:
        return json.loads(self.store.get(name)) if self.store.exists(name) else None

    def _write(self, name: str, record: dict) -> None:
        self.store.put(name, json.dumps(record, sort_keys=True).encode())

    def _create(self, name: str, record: dict) -> bool:
        """Write the record only if the file does not exist; False when it did."""
        data = json.dumps(record, sort_keys=True).encode()
        return self.store.put_new(name, data, sha256=_digest(data)) is None

    def _first_free(self) -> int:
        if self._next is None:
            self._next = self._written_next() or self._listed_next()
        return self._next

    def _written_next(self) -> int | None:
        """The first number past the last claim, as the runs wrote it down (None: never written, damaged)."""
        try:
            record = self._read(NEXT)
        except ValueError:
            return None
        number = record.get("number") if isinstance(record, dict) else None
        # Only a number an alert can have (a damaged file, 1e999 or -5, says nothing: the numbers are listed).
        return number if isinstance(number, int) and 0 < number < MAX_NUMBER else None

    def _listed_next(self) -> int:
        """The first number past every number file: a store from before `next.json`, listed once."""
        taken = [int(k.rsplit("/", 1)[-1].split(".")[0]) for k in self.store.list(f"{ROOT}/numbers/")
                 if k.endswith(".json")]
        return max(taken, default=0) + 1

    def number(self, key: str, occurrence: str | None = None) -> int:
        """The alert's number: the one its occurrence was given (the same object's alert, whatever track id
        it has now), else the one its key was given unless that number is another object's, else the next
        free one, claimed and bound now."""
        number = self._number_of_occurrence(occurrence)
        if number is not None:
            return self._bind_key(key, number, occurrence)
        number = self._by_key(key, occurrence)
        if number is not None and occurrence is None:
            return number
        if number is None:
            self.store.require_conditional_writes()  # numbers are given once only where put-if-absent holds
            number = self._claim(key, occurrence)
        # (Or numbered by its key alone, before occurrences were kept: the occurrence is bound to it now.)
        if occurrence is not None and not self._create(
                self._occurrence_file(occurrence), {"occurrence": occurrence, "number": number}):
            number = self._number_of_occurrence(occurrence) or number  # bound first by another run: its own
        return self._bind_key(key, number, occurrence)

    def given(self, key: str, occurrence: str | None = None) -> int | None:
        """The number an alert was given, as `number` finds it, without giving one (None: none given)."""
        number = self._number_of_occurrence(occurrence)
        return number if number is not None else self._by_key(key, occurrence)

    def _by_key(self, key: str, occurrence: str | None) -> int | None:
        """The number given to the key, unless it was claimed for another object (the track id the key
        holds was that object's when it was numbered)."""
        number = self.number_of(key)
        if number is not None and occurrence is not None and self._occurrence_at(number) not in (
                None, occurrence):
            return None
        return number

    def _bind_key(self, key: str, number: int, occurrence: str | None) -> int:
        """Bind the key to the number unless it is bound already; the number the alert has. An occurrence's
        number is its alert's whatever the key was bound to (this number, or that of the object that had
        the key's track id before); an alert known by its key alone has the number bound first, by
        whichever run of those racing for the key bound it."""
        if self._create(self._key_file(key), {"key": key, "number": number}) or occurrence is not None:
            return number
        return self.number_of(key)

    def _claim(self, key: str, occurrence: str | None) -> int:
        """The next free number, claimed for the key (or the one a run killed mid-way claimed for it)."""
        # Claimed for the occurrence when there is one: its key may be another object's claim from before.
        claim_file = self._claim_file(occurrence if occurrence is not None else key)
        claim = self._read(claim_file)
        number = claim["number"] if claim is not None else self._first_free()
        record = {"key": key, **({"occurrence": occurrence} if occurrence is not None else {})}
        while True:
            self._write(claim_file, {"key": key, "number": number})
            taken = not self._create(self.number_file(number), record)
            if not taken or self._read(self.number_file(number)) == record:
                break  # ours now, or ours from before a crash
            # Taken by another run: start again past what the runs wrote down since, else at the next one.
            number = max(number + 1, self._written_next() or 0)
        self._next = max(self._first_free(), number + 1)
        if (self._written_next() or 0) < self._next:
            self._write(NEXT, {"number": self._next})
        return number

    def _occurrence_file(self, occurrence: str) -> str:
        return f"{ROOT}/occurrences/{_digest(occurrence.encode())}.json"

    def _number_of_occurrence(self, occurrence: str | None) -> int | None:
        """The number an occurrence was bound to (None: not bound, or its file is damaged: numbered by its
        key then)."""
        if occurrence is None:
            return None
        try:
            record = self._read(self._occurrence_file(occurrence))
        except ValueError:
            return None
        number = record.get("number") if isinstance(record, dict) else None
        return number if _counted(number) and 0 < number < MAX_NUMBER else None

    def _occurrence_at(self, number: int) -> str | None:
        """The occurrence a number was claimed for (None: claimed by key alone)."""
        record = self._read(self.number_file(number))
        return record.get("occurrence") if record else None

    def number_of(self, key: str) -> int | None:
        """The number given to a key, if one was."""
        record = self._read(self._key_file(key))
        return record["number"] if record is not None else None

    def missing(self, number: int) -> str:
        """Why there is no alert with this number: never given, given to an alert the rules no longer
        raise, or claimed in a race another run won (the alert has that run's number)."""
        record = self._read(self.number_file(number)) if 0 < number < MAX_NUMBER else None
        if not record:
            return f"there is no alert {number}"
        key = record["key"]
        given = self._number_of_occurrence(record.get("occurrence")) or self.number_of(key)
        if given is not None and given != number:
            return f"{number} was claimed by a run that lost a race for it: that alert is number {given}"
        told = self.told(number)
        if told is not None:
            return (f"alert {number} ({told.get('rule')} on {told.get('source_id')}) was raised live at "
                    f"{told.get('fired_at')} and told on Kafka; it is not in the alerts table: its hour's "
                    "alerts are not built yet, or the current rules and frames no longer raise it")
        return f"alert {number} was given to {key}, which the current rules and frames no longer raise"

    def told(self, number: int) -> dict | None:
        """What the alert said on Kafka, as its publication was recorded (None: not told, told before this
        was kept, or the record is damaged)."""
        try:
            record = self.sent(number, TOPIC_RECORD)
        except (ValueError, RecursionError, BadObject):  # damaged, or nested past the parser's depth
            return None
        alert = record.get("alert") if isinstance(record, dict) else None
        return alert if isinstance(alert, dict) and alert.get("number") == number else None

    def latest_told(self, count: int) -> list[dict]:
        """What the alerts of the latest `count` numbers said on Kafka, newest first (those not told are
        passed over): the alerts raised live, before their hour's alerts are built. Costs `count` reads."""
        last = (self._written_next() or self._listed_next()) - 1
        return [told for number in range(last, max(0, last - count), -1)
                if (told := self.told(number)) is not None]

    def key_of(self, number: int) -> str | None:
        record = self._read(self.number_file(number))
        return record["key"] if record else None

    def _sent_file(self, number: int, target: str) -> str:
        return f"{ROOT}/sent/{number:010d}/{target}.json"

    def sent(self, number: int, target: str) -> dict | None:
        """How a notification of the alert to a target ended, if it was made: delivered or dead-lettered."""
        return self._read(self._sent_file(number, target))

    def record_sent(self, number: int, target: str, state: str, **detail) -> None:
        """How a notification ended for good (delivered or dead-lettered); no longer retried."""
        self._write(self._sent_file(number, target),
                    {"state": state, "at": datetime.now(UTC).isoformat(), **detail})

    def _retry_file(self, number: int, target: str) -> str:
        return f"{ROOT}/retrying/{number:010d}-{target}.json"

    def retrying(self, number: int, target: str) -> dict | None:
        """The failed send of the alert to a webhook that is being retried, if there is one."""
        return self._read(self._retry_file(number, target))

    def record_retry(self, message: dict, target: str, retry: dict) -> None:
        """A failed send to retry later: the message itself, and when (`retry`: since, tries, next_at, …)."""
        self._write(self._retry_file(message["number"], target),
                    {"message": message, "target": target, **retry})

    def forget_retry(self, number: int, target: str) -> None:
        """The retried send ended (its end recorded first: a run killed between the two finds it ended)."""
        self.store.delete(self._retry_file(number, target))

    def retries(self) -> list[dict]:
        """Every send being retried: those failing within the webhooks' retry horizons, not all ever made.
        A record that cannot be read as one (damaged, or written by hand) is set aside under
        `retrying-damaged/`, where an operator finds it, instead of stopping every retry after it."""
        found = []
        for key in self.store.list(f"{ROOT}/retrying/"):
            if not key.endswith(".json"):
                continue
            try:
                data = self.store.get(key)
            except BadObject:  # ended and forgotten by another run since the listing
                continue
            try:
                record = json.loads(data)
            except ValueError:
                record = None
            if retry_problem(record) is None:
                found.append(record)
            else:
                self.store.put(key.replace("/retrying/", "/retrying-damaged/", 1), data)
                self.store.delete(key)
        return found

    def deliveries(self, number: int) -> dict[str, dict]:
        prefix = f"{ROOT}/sent/{number:010d}/"
        return {k[len(prefix):].removesuffix(".json"): json.loads(self.store.get(k))
                for k in self.store.list(prefix) if k.endswith(".json")}
