"""Alert numbers on both storage backends: given once, kept across runs, found again after a crash
between the claim and its record, never shared by two runs claiming at once, at a cost that does not
grow with the numbers given."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest

from imgpipeline.defs.alerts.ledger import NEXT, Ledger
from imgpipeline_tests.conftest import ON_EVERY_BACKEND

# Numbers are claimed by conditional writes, which each backend makes its own way (a folder's exclusive
# create, S3's If-None-Match): every test here on each.
pytestmark = [pytest.mark.integration, ON_EVERY_BACKEND]


def test_numbers_are_given_once_and_kept(storage):
    store = storage.open()
    first = Ledger(store)
    assert [first.number(k) for k in ("a", "b", "a", "c")] == [1, 2, 1, 3]
    assert Ledger(store).number("b") == 2 and Ledger(store).number("d") == 4  # a new run, the same book
    assert [Ledger(store).key_of(n) for n in (1, 2, 3, 4, 5)] == ["a", "b", "c", "d", None]


def test_a_claim_cut_short_is_found_again(storage):
    store = storage.open()
    ledger = Ledger(store)
    ledger.number("a")
    # A run killed after claiming number 2 for "b" but before binding "b" to it.
    store.put(ledger._claim_file("b"), json.dumps({"key": "b", "number": 2}).encode())
    data = json.dumps({"key": "b"}, sort_keys=True).encode()
    assert store.put_new(Ledger.number_file(2), data, sha256="x") is None
    assert Ledger(store).number("b") == 2
    assert Ledger(store).number("c") == 3
    # …and one killed before its claim landed: the number it meant to take is still free.
    store.put(ledger._claim_file("d"), json.dumps({"key": "d", "number": 4}).encode())
    assert Ledger(store).number("d") == 4


class _Held:
    """The store of a run that stops at its first call of `method` on a file whose name holds `part`,
    until let go."""

    def __init__(self, store, method: str, part: str):
        self._store, self._method, self._part = store, method, part
        self.reached, self.go = threading.Event(), threading.Event()

    def __getattr__(self, name):
        found = getattr(self._store, name)
        if name != self._method:
            return found

        def held(path, *args, **kwargs):
            if self._part in path and not self.reached.is_set():
                self.reached.set()
                assert self.go.wait(timeout=60)
            return found(path, *args, **kwargs)
        return held


def _number_in_thread(store, key: str, into: list[int]) -> threading.Thread:
    run = threading.Thread(target=lambda: into.append(Ledger(store).number(key)))
    run.start()
    return run


def test_two_runs_racing_for_one_key_agree_on_its_number(storage):
    store = storage.open()
    # Run B finds the key without a number and no claim for it, and stops before it looks for a free
    # number; run A claims number 1 and stops before it binds the key; B goes on, claims 2 and binds the
    # key to it first: both give the alert the number bound first.
    numbers: list[int] = []
    b = _Held(store, "exists", NEXT)
    run_b = _number_in_thread(b, "same", numbers)
    assert b.reached.wait(timeout=60)
    a = _Held(store, "put_new", "/keys/")
    run_a = _number_in_thread(a, "same", numbers)
    assert a.reached.wait(timeout=60)
    b.go.set()
    run_b.join(timeout=60)
    a.go.set()
    run_a.join(timeout=60)
    assert numbers == [2, 2]
    # …and four runs let go at once.
    numbers: list[int] = []
    barrier = threading.Barrier(4)

    def claim():
        ledger = Ledger(store)
        barrier.wait()
        numbers.append(ledger.number("four"))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(numbers)) == 1 and len(numbers) == 4
    assert Ledger(store).number_of("same") == 2 and Ledger(store).number_of("four") == numbers[0]
    # What a number that is no alert in the tables says: a claim lost in a race points at the winner.
    ledger = Ledger(store)
    assert ledger.missing(1) == "1 was claimed by a run that lost a race for it: that alert is number 2"
    assert ledger.missing(2).endswith("which the current rules and frames no longer raise")
    assert ledger.missing(99) == "there is no alert 99"
    assert Ledger(store).number("next") > max(2, numbers[0])  # claims lost in a race are never given again


def crossing(who) -> str:
    """A track rule's key with `who` for the track id (its occurrence with the detection's index)."""
    return f"door|cam|line|door|{who}|in|f9"


# A track rule's alert under the ids two trackings gave its track: one object of one frame.
BEFORE, AFTER, OCCURRENCE = crossing(111000), crossing(109000), crossing("#0")


def test_an_alert_found_again_under_another_track_id_keeps_its_number(storage):
    store = storage.open()
    first = Ledger(store).number(BEFORE, OCCURRENCE)
    assert Ledger(store).number(AFTER, OCCURRENCE) == first  # the hour built again: the same alert
    assert Ledger(store).number(AFTER) == first and Ledger(store).number_of(BEFORE) == first
    assert Ledger(store).number(crossing(112000), crossing("#1")) == first + 1  # another object
    assert Ledger(store).number("a frame rule's key") == first + 2  # about no object: by its key alone
    # A run killed after binding an occurrence to the number it claimed, before binding the key: run
    # again (under either key), the key is bound to that number; the number after it is still free.
    ledger = Ledger(store)
    store.put(ledger._claim_file("k1"), json.dumps({"key": "k1", "number": first + 3}).encode())
    for name, record in ((Ledger.number_file(first + 3), {"key": "k1"}),
                         (ledger._occurrence_file("o1"), {"occurrence": "o1", "number": first + 3})):
        data = json.dumps(record, sort_keys=True).encode()
        assert store.put_new(name, data, sha256="x") is None
    assert Ledger(store).number("k2", "o1") == first + 3 and Ledger(store).number("k1", "o1") == first + 3
    assert Ledger(store).number("k3") == first + 4


def test_an_object_given_another_objects_track_id_keeps_its_own_number(storage):
    """Track ids are times of confirmation: tracked again, an hour can give the id one object had to
    another. Each alert keeps its own object's number, and an alert new to the ledger under a key whose
    number is another object's gets a number of its own: no number is given to two alerts."""
    store = storage.open()
    x = Ledger(store).number(crossing(5000), crossing("#0"))
    y = Ledger(store).number(crossing(5001), crossing("#1"))
    assert Ledger(store).number(crossing(5000), crossing("#1")) == y  # y confirmed first now: x's old id
    assert Ledger(store).number(crossing(5001), crossing("#0")) == x
    assert [Ledger(store).given(crossing(5000), crossing(f"#{i}")) for i in (0, 1, 2)] == [x, y, None]
    z = Ledger(store).number(crossing(5000), crossing("#2"))  # a third object under that id, its alert new
    assert len({x, y, z}) == 3 and Ledger(store).given(crossing(5000), crossing("#2")) == z


def test_a_store_numbered_by_keys_alone_or_a_damaged_occurrence_keeps_its_numbers(storage):
    store = storage.open()
    old = Ledger(store).number(BEFORE)  # numbered before occurrences were kept
    assert Ledger(store).number(BEFORE, OCCURRENCE) == old  # its occurrence bound to its number now
    assert Ledger(store).number(AFTER, OCCURRENCE) == old
    # An occurrence file that cannot be read: numbered by key, as before occurrences were kept.
    damaged = crossing("#7")
    store.put(Ledger(store)._occurrence_file(damaged), b"{damaged")
    first = Ledger(store).number(crossing(7000), damaged)
    assert Ledger(store).number(crossing(7000), damaged) == first != old
    assert Ledger(store).given(crossing(7000), damaged) == first


def test_runs_numbering_one_alert_under_two_track_ids_at_once_agree_on_its_number(storage):
    store = storage.open()
    numbers: list[int] = []
    barrier = threading.Barrier(4)

    def claim(key: str):  # the live lane and the hourly chain, each with the ids its tracking gave
        ledger = Ledger(store)
        barrier.wait()
        numbers.append(ledger.number(key, OCCURRENCE))

    threads = [threading.Thread(target=claim, args=(k,)) for k in (BEFORE, AFTER, BEFORE, AFTER)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(numbers) == 4 and len(set(numbers)) == 1
    assert Ledger(store).number_of(BEFORE) == Ledger(store).number_of(AFTER) == numbers[0]
    lost = [n for n in range(1, numbers[0] + 3) if n != numbers[0] and Ledger(store).key_of(n)]
    assert all(Ledger(store).missing(n).endswith(f"that alert is number {numbers[0]}") for n in lost)


def test_runs_claiming_at_once_never_share_a_number(storage):
    store = storage.open()
    given: dict[str, int] = {}

    def claim(worker: int):
        ledger = Ledger(store)
        for i in range(15):
            key = f"{worker}-{i}"
            given[key] = ledger.number(key)

    threads = [threading.Thread(target=claim, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(given) == 45
    assert len(set(given.values())) == 45  # none shared
    assert all(Ledger(store).key_of(n) == k for k, n in given.items())


class Counted:
    """A real store that counts what each call costs: requests, and the objects a listing returns."""

    def __init__(self, store):
        self.store, self.costs = store, Counter()

    def __getattr__(self, name):
        call = getattr(self.store, name)

        def counted(*args, **kwargs):
            found = call(*args, **kwargs)
            self.costs[name] += 1
            if name == "list":
                self.costs["objects listed"] += len(found)
            return found

        return counted


def test_numbering_costs_the_same_however_many_numbers_were_given(storage):
    store = storage.open()

    def cost_of_a_run(keys: list[str]) -> Counter:
        counted = Counted(store)
        ledger = Ledger(counted)  # each run, and each live range, numbers with a ledger of its own
        assert [ledger.number(k) for k in keys] == [ledger.number_of(k) for k in keys]
        return counted.costs

    Ledger(store).number("first")
    early = cost_of_a_run(["early-1", "early-2"])
    many = Ledger(store)
    for i in range(60):
        many.number(f"between-{i}")
    late = cost_of_a_run(["late-1", "late-2"])
    assert late == early and late["objects listed"] == 0
    assert Ledger(store).number_of("late-2") == 65 and Ledger(store).key_of(65) == "late-2"


def test_a_store_numbered_before_the_next_number_was_kept_goes_on_from_its_numbers(storage):
    store = storage.open()
    ledger = Ledger(store)
    given = {k: ledger.number(k) for k in ("a", "b", "c")}
    store.delete(NEXT)  # a store numbered before it
    assert Ledger(store).number("d") == 4
    assert {k: Ledger(store).number(k) for k in given} == given  # old keys: the same numbers
    store.put(NEXT, json.dumps({"number": 2}).encode())  # written late by a run that claimed 1
    assert Ledger(store).number("e") == 5  # the numbers taken since are passed over
    store.put(NEXT, b"{damaged")
    assert Ledger(store).number("f") == 6
    assert [Ledger(store).key_of(n) for n in range(1, 7)] == ["a", "b", "c", "d", "e", "f"]


def test_runs_claiming_at_once_from_a_next_number_written_late_never_share_a_number(storage):
    store = storage.open()
    old = {f"old-{i}": Ledger(store).number(f"old-{i}") for i in range(10)}
    store.put(NEXT, json.dumps({"number": 3}).encode())  # written late by a run that claimed 2
    given: dict[str, int] = {}

    def claim(worker: int):
        ledger = Ledger(store)
        for i in range(10):
            given[f"{worker}-{i}"] = ledger.number(f"{worker}-{i}")

    threads = [threading.Thread(target=claim, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(given.values()) == list(range(11, 41))  # none shared, none taken before
    assert all(Ledger(store).key_of(n) == k for k, n in {**old, **given}.items())
    assert all(Ledger(store).number_of(k) == n for k, n in {**old, **given}.items())
