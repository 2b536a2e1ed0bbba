"""The range ledger folded: a partition's oldest contiguous entries become one archive and one mark, so a
commit or the coverage check lists a bounded number of objects; what is accounted for is the same at
every moment of a fold, one SIGKILLed midway included, and the next fold finishes it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from imgpipeline.defs.records.ledger import (
    ARCHIVE,
    accounted_ranges,
    contiguous_end,
    fold_ledger,
    holes,
    ledger_prefix,
    range_entry,
    read_ledger,
    record_range,
)
from imgpipeline.resources import StorageResource
from imgpipeline_tests.conftest import ON_EVERY_BACKEND, s3_relay
from imgpipeline_tests.pipeline import STOP_AFTER, kill_once_stopped, storage_env

pytestmark = [pytest.mark.integration]
TOPIC = "frames"


def write_ledger(store, ranges: list[tuple[int, int]]) -> None:
    for start, end in ranges:
        record_range(store, TOPIC, 0, start, end, 0, run_id=f"run-{start}", counts={"read": end - start},
                     gaps=[], duplicates=[start] if start % 100 == 0 else [], landing=[])


def accounted(store) -> tuple[int, list[tuple[int, int]]]:
    """Where a commit from offset 0 may go, and the holes up to the last offset: what folding must keep."""
    ranges = accounted_ranges(store, TOPIC, 0)
    return contiguous_end(ranges, 0), holes(ranges, 0, max(end for _, end in ranges))


# 200 ranges of 10 offsets, a hole at 2000-2010 (a run still working), 20 ranges after it.
RANGES = [(s, s + 10) for s in range(0, 2000, 10)] + [(s, s + 10) for s in range(2010, 2210, 10)]


def test_a_fold_keeps_what_is_accounted_for_and_lists_a_bounded_ledger(storage):
    store = storage.open()
    write_ledger(store, RANGES)
    before = accounted(store)
    assert before == (2000, [(2000, 2010)])
    entries = {(s, e): range_entry(store, TOPIC, 0, s, e) for s, e in RANGES[:170]}

    assert fold_ledger(store, TOPIC, 0, keep=50, fold_at=100) == (0, 1700)  # all but the latest 50
    assert accounted(store) == before
    ledger = read_ledger(store, TOPIC, 0)
    assert ledger.folded == (0, 1700) and len(ledger.marks) == 1 and len(ledger.live) == 50
    assert len(store.list(ledger_prefix(TOPIC, 0))) == 50
    # The folded entries are kept, as written, in the archive under the day of the fold.
    (archive,) = store.list(f"{ARCHIVE}/")
    assert re.fullmatch(rf"{ARCHIVE}/dt=[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}/{TOPIC}/0/0-1700\.jsonl", archive)
    archived = [json.loads(line) for line in store.get(archive).splitlines()]
    assert {(e["start"], e["end"]): e for e in archived} == entries
    # Nothing more to fold until more runs come; then only what is contiguous with the mark.
    assert fold_ledger(store, TOPIC, 0, keep=50, fold_at=100) is None
    write_ledger(store, [(s, s + 10) for s in range(2210, 2800, 10)])
    assert fold_ledger(store, TOPIC, 0, keep=50, fold_at=100) == (0, 2000)  # up to the hole
    write_ledger(store, [(2000, 2010)] + [(s, s + 10) for s in range(2800, 3100, 10)])  # the hole's run done
    assert fold_ledger(store, TOPIC, 0, keep=50, fold_at=100) == (0, 2600)
    assert accounted(store) == (3100, [])
    assert len(read_ledger(store, TOPIC, 0).marks) == 1


def test_a_range_run_again_below_the_fold_joins_it_and_a_fold_that_lost_a_race_changes_nothing(storage):
    store = storage.open()
    write_ledger(store, [(s, s + 10) for s in range(10, 2000, 10)])  # the range 0-10 failed
    assert fold_ledger(store, TOPIC, 0, keep=50, fold_at=100) == (10, 1500)
    write_ledger(store, [(0, 10)])  # repaired
    assert accounted(store) == (2000, [])
    write_ledger(store, [(s, s + 10) for s in range(2000, 2600, 10)])
    assert fold_ledger(store, TOPIC, 0, keep=50, fold_at=100) == (0, 2100)
    assert accounted(store) == (2600, [])

    # Another run of the partition folded the same entries first: this fold stops and changes nothing.
    write_ledger(store, [(s, s + 10) for s in range(2600, 3200, 10)])
    ledger = read_ledger(store, TOPIC, 0)
    store.delete(ledger.live[0][2])
    assert fold_ledger(store, TOPIC, 0, keep=50, fold_at=100, ledger=ledger) is None
    assert read_ledger(store, TOPIC, 0).folded == (0, 2100)


FOLD = STOP_AFTER + """
import sys
from imgpipeline.defs.records.ledger import fold_ledger, folded_prefix
from imgpipeline.resources import StorageResource
store = StorageResource.from_env().open()
if sys.argv[1:] == ["stop"]:  # once its mark is written, before any entry is deleted
    stop_after(store, "put", lambda key, *_, **__: key.startswith(folded_prefix("frames", 0)))
fold_ledger(store, "frames", 0, keep=50, fold_at=100)
"""


def deletes_objects(method: str, path: str) -> bool:
    """Whether a request to S3 is a DeleteObjects (`POST /bucket?delete`)."""
    return method == "POST" and "?delete" in path


def fold_killed_at_its_deletes(storage) -> None:
    """A fold in a process of its own, SIGKILLed once its mark is written and before its entries are
    all deleted: a folder's fold stops itself there; S3 deletes them in one request, which a relay in
    front of the endpoint holds until the process is dead."""
    if storage.location.scheme == "file":
        kill_once_stopped(subprocess.Popen([sys.executable, "-c", FOLD, "stop"], env=storage_env(storage)))
        return
    with s3_relay(storage.endpoint_url, hold=deletes_objects) as relay:
        relayed = StorageResource(**{**storage.model_dump(), "endpoint_url": relay.url})
        folding = subprocess.Popen([sys.executable, "-c", FOLD], env=storage_env(relayed))
        try:
            assert relay.held.wait(300), "the fold never deleted its entries"
        finally:
            folding.send_signal(signal.SIGKILL)
            folding.wait()


@ON_EVERY_BACKEND  # S3 deletes a fold's entries in one request, held by a relay until the kill
def test_a_fold_killed_midway_loses_nothing_and_the_next_finishes_it(storage):
    store = storage.open()
    count = 300
    ranges = [(s, s + 10) for s in range(0, 10 * count, 10)]
    folded = (0, 10 * (count - 50))
    write_ledger(store, ranges)
    before = accounted(store)
    fold_killed_at_its_deletes(storage)
    midway = read_ledger(store, TOPIC, 0)
    assert midway.folded == folded and len(midway.live) > 50, "the fold was not killed midway"
    assert accounted(store) == before

    assert fold_ledger(store, TOPIC, 0, keep=50, fold_at=100) is None  # nothing new: what was left goes
    after = read_ledger(store, TOPIC, 0)
    assert after.folded == folded and len(after.live) == 50 and len(after.marks) == 1
    assert accounted(store) == before
