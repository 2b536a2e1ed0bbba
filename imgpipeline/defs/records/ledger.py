"""The range ledger: each run's proof that it accounted for every offset of its range
(docs/contracts.md), what the consumer group's commit and the coverage check read, and its folding.

A run writes `landing/ranges/<topic>/<partition>/[g<N>/]<start>-<end>.json`. Once a partition holds
more than FOLD_AT such entries, the oldest contiguous ones (all but the latest KEEP_LIVE) are folded:
copied, one JSON line each, into
`landing/ranges-archive/dt=<day of the fold>/<topic>/<partition>/[g<N>/]<first>-<end>.jsonl` (retention
deletes a day's archive with the landing's keeping time: nothing reads it, it is there for an operator),
then summed up by one mark, `landing/ranges-folded/<topic>/<partition>/[g<N>/]<end>-<first>.json`
(every offset in [first, end) is accounted for), then deleted. What a commit or the coverage check
lists is the newest mark and the live entries: as many as are in flight plus KEEP_LIVE to FOLD_AT,
whatever the partition's history. A fold killed at any point is finished by the next: an archive without
its mark is written again, entries below the newest mark are deleted, older marks go.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from imgpipeline.defs.records.keys import range_name
from imgpipeline.resources.storage import BadObject, Storage

RANGES = "landing/ranges"
ARCHIVE = "landing/ranges-archive"
FOLDED = "landing/ranges-folded"
# Entries kept live after a fold (the coverage check reads the latest ones' duplicates), and how many
# live entries make a fold: one fold per KEEP_LIVE runs of a partition.
KEEP_LIVE = 200
FOLD_AT = 2 * KEEP_LIVE
ENTRY = re.compile(r"([0-9]+)-([0-9]+)\.json")
MARK = re.compile(r"([0-9]{20})-([0-9]+)\.json")


def ledger_prefix(topic: str, partition: int, generation: int = 0) -> str:
    return f"{RANGES}/{topic}/{partition}/" + (f"g{generation}/" if generation else "")


def range_key(topic: str, partition: int, start: int, end: int, generation: int = 0) -> str:
    return f"{ledger_prefix(topic, partition, generation)}{start}-{end}.json"


def range_entry(store: Storage, topic: str, partition: int, start: int, end: int,
                generation: int = 0) -> dict:
    """The ledger entry of one accounted range, as record_range wrote it."""
    return json.loads(store.get(range_key(topic, partition, start, end, generation)))


def record_range(store: Storage, topic: str, partition: int, start: int, end: int, generation: int, *,
                 run_id: str, counts: dict, gaps: list[tuple[int, int]], duplicates: list[int],
                 landing: list[str]) -> str:
    """`landing/ranges/<topic>/<partition>/[g<N>/]<start>-<end>.json`: the proof that a range is
    accounted for, offset by offset (landed, dead-lettered, a duplicate of a frame already processed:
    `duplicates`, or deleted by retention before it was read: `deleted`; each as [first, end) spans).
    Written after the landing files, before the commit."""
    key = range_key(topic, partition, start, end, generation)
    store.put(key, json.dumps({"range": range_name(topic, partition, start, end, generation),
                               "start": start, "end": end, "generation": generation, "run_id": run_id,
                               "counts": counts, "deleted": [list(g) for g in gaps],
                               "duplicates": [list(s) for s in spans(duplicates)],
                               "landing": landing}).encode())
    return key


def spans(offsets: list[int]) -> list[tuple[int, int]]:
    """Offsets as sorted [first, end) spans: [3, 4, 5, 9] → [(3, 6), (9, 10)]."""
    found: list[tuple[int, int]] = []
    for offset in sorted(set(offsets)):
        if found and found[-1][1] == offset:
            found[-1] = (found[-1][0], offset + 1)
        else:
            found.append((offset, offset + 1))
    return found


def accounted_ranges(store: Storage, topic: str, partition: int,
                     generation: int = 0) -> list[tuple[int, int]]:
    """The [start, end) ranges of a partition that runs have accounted for, sorted: the folded span
    (one range) and the live entries above it."""
    ledger = read_ledger(store, topic, partition, generation)
    return ([ledger.folded] if ledger.folded else []) + ledger.live_ranges


def holes(ranges: list[tuple[int, int]], first: int, upto: int) -> list[tuple[int, int]]:
    """The offsets in [first, upto) that no range covers, as [start, end) ranges."""
    missing, position = [], first
    for start, end in sorted(ranges):
        if start > position:
            missing.append((position, min(start, upto)))
        position = max(position, end)
        if position >= upto:
            break
    if position < upto:
        missing.append((position, upto))
    return [(s, e) for s, e in missing if s < e]


def contiguous_end(ranges: list[tuple[int, int]], base: int) -> int:
    """How far from `base` the ranges cover without a hole: where a consumer group may commit."""
    position = base
    for start, end in sorted(ranges):
        if start > position:
            break
        position = max(position, end)
    return position


@dataclass
class Ledger:
    """A partition's ledger as listed: the folded span (from its newest mark), the marks, and the live
    entries (start, end, key), sorted."""

    folded: tuple[int, int] | None
    marks: list[str]
    live: list[tuple[int, int, str]]

    @property
    def live_ranges(self) -> list[tuple[int, int]]:
        return [(start, end) for start, end, _ in self.live]


def archive_key(topic: str, partition: int, generation: int, first: int, end: int, day: date) -> str:
    """Where a fold copies the entries of [first, end): under the day it folds them."""
    return (f"{ARCHIVE}/dt={day.isoformat()}/{topic}/{partition}/" + (f"g{generation}/" if generation else "")
            + f"{first}-{end}.jsonl")


def folded_prefix(topic: str, partition: int, generation: int = 0) -> str:
    return f"{FOLDED}/{topic}/{partition}/" + (f"g{generation}/" if generation else "")


def read_ledger(store: Storage, topic: str, partition: int, generation: int = 0) -> Ledger:
    """One listing of the live entries, then one of the marks (another generation's folder passed over).
    In that order: a fold between the two shows its entries twice, never a hole."""
    prefix, live = ledger_prefix(topic, partition, generation), []
    for key in store.list(prefix):
        if (found := ENTRY.fullmatch(key[len(prefix):])) is not None:
            live.append((int(found.group(1)), int(found.group(2)), key))
    marks, folded = [], None
    mark_prefix = folded_prefix(topic, partition, generation)
    for key in store.list(mark_prefix):
        if (found := MARK.fullmatch(key[len(mark_prefix):])) is not None:
            marks.append(key)
            span = (int(found.group(2)), int(found.group(1)))
            folded = span if folded is None or span[1] > folded[1] else folded
    return Ledger(folded, sorted(marks), sorted(live))


def fold_ledger(store: Storage, topic: str, partition: int, generation: int = 0, *, keep: int = KEEP_LIVE,
                fold_at: int = FOLD_AT, ledger: Ledger | None = None) -> tuple[int, int] | None:
    """Fold the partition's oldest live entries that touch the folded span or each other without a hole
    (all but the latest `keep`) once there are more than `fold_at`; the folded span after it, or None
    when nothing was folded. Entries inside the mark (a fold killed before it deleted them, a range run
    again) go either way. Another fold that deleted an entry first wins: this one stops, changing nothing."""
    ledger = ledger or read_ledger(store, topic, partition, generation)
    mark = ledger.folded
    inside = [key for start, end, key in ledger.live if mark and mark[0] <= start and end <= mark[1]]
    live = [entry for entry in ledger.live if entry[2] not in inside]
    folded = []
    if len(live) > fold_at:
        low, high = mark if mark else (live[0][0], live[0][0])
        for start, end, key in live[:len(live) - keep]:
            if start > high:
                break  # a hole: what is past it is not accounted for without it
            if end < low:
                continue  # below the span with a hole between: stays live
            folded.append(key)
            low, high = min(low, start), max(high, end)
    if folded:
        try:
            lines = b"".join(store.get(key).strip() + b"\n" for key in folded)
        except BadObject:
            return None  # folded meanwhile by another run of the partition
        store.put(archive_key(topic, partition, generation, low, high, datetime.now(UTC).date()), lines)
        new_mark = f"{folded_prefix(topic, partition, generation)}{high:020d}-{low}.json"
        store.put(new_mark, json.dumps({"from": low, "to": high, "entries": len(folded)}).encode())
        store.delete_many([key for key in ledger.marks if key != new_mark])
        mark = (low, high)
    store.delete_many(inside + folded)
    return mark if folded else None
