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
    # A run killed after claiming number 2 for "b" but before recording it as given.
    store.put(ledger._key_file("b"), json.dumps({"key": "b", "number": 2, "state": "claiming"}).encode())
    data = json.dumps({"key": "b"}, sort_keys=True).encode()
    assert store.put_new(Ledger.number_file(2), data, sha256="x") is None
    assert Ledger(store).number("b") == 2
    assert Ledger(store).number("c") == 3
    # …and one killed before its claim landed: the number it meant to take is still free.
    store.put(ledger._key_file("d"), json.dumps({"key": "d", "number": 4, "state": "claiming"}).encode())
    assert Ledger(store).number("d") == 4


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
    assert sorted(given.values()) == list(range(1, 46))  # none shared, none skipped
    assert all(Ledger(store).key_of(n) == k for k, n in given.items())
