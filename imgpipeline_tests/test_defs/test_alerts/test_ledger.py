"""Alert numbers on both storage backends: given once, kept across runs, found again after a crash
between the claim and its record, never shared by two runs claiming at once."""

from __future__ import annotations

import json
import threading

import pytest

from imgpipeline.defs.alerts.ledger import Ledger

pytestmark = pytest.mark.integration


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


def test_two_runs_racing_for_one_key_agree_on_its_number(storage):
    store = storage.open()
    numbers: list[int] = []
    barrier = threading.Barrier(4)

    def claim():
        ledger = Ledger(store)
        barrier.wait()
        numbers.append(ledger.number("same"))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(numbers)) == 1 and len(numbers) == 4
    assert Ledger(store).number_of("same") == numbers[0]
    # What a number that is no alert in the tables says: a claim lost in a race points at the winner.
    ledger = Ledger(store)
    lost = ledger.number("next") + 1
    data = json.dumps({"key": "same"}, sort_keys=True).encode()
    assert store.put_new(Ledger.number_file(lost), data, sha256="x") is None
    assert ledger.missing(lost) == f"{lost} was claimed by a run that lost a race for it: that alert is " \
                                   f"number {numbers[0]}"
    assert ledger.missing(numbers[0]).endswith("which the current rules and frames no longer raise")
    assert ledger.missing(lost + 1) == f"there is no alert {lost + 1}"
    assert Ledger(store).number("next") > numbers[0]  # claims lost in the race are never given again


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
