"""A follower's claims: before it reads a range of its partition, `landing/claims/<topic>/<partition>/
[g<N>/]<start>.json` holds the range's end and its run, deleted once the range is accounted for. The
partition's next holder goes on from the ledger and a claim found there (follow.py)."""

import json

from imgpipeline.defs.records.ledger import accounted_ranges, contiguous_end
from imgpipeline.resources.storage import BadObject, Storage

CLAIMS = "landing/claims"


def claims_prefix(topic: str, partition: int, generation: int = 0) -> str:
    return f"{CLAIMS}/{topic}/{partition}/" + (f"g{generation}/" if generation else "")


def resume(store: Storage, topic: str, partition: int, generation: int, floor: int,
           tidy: bool = True) -> tuple[int, int | None, list[tuple[int, int]]]:
    """Where a run goes on in a partition: how far from `floor` the ledger accounts for every offset; the
    end of a range claimed there and not accounted for (None: none); and the ranges accounted for past
    the hole there (detect_frames runs the sensor launched while no follower ran, beside one that
    failed), which the run passes over. Older claims are deleted (`tidy`: by a follower, which holds the
    partition; frames_sensor only reads them, since a range it planned from a claim may still fail)."""
    accounted = accounted_ranges(store, topic, partition, generation)
    position = contiguous_end(accounted, floor)
    ahead = [(start, end) for start, end in accounted if start > position]
    prefix, claimed, stale = claims_prefix(topic, partition, generation), None, []
    for key in store.list(prefix):
        name = key[len(prefix):].removesuffix(".json")
        if not name.isdigit():
            continue
        if int(name) < position:
            stale.append(key)
        elif int(name) == position:
            claimed = claimed_end(store, key)
            if claimed is None:
                stale.append(key)
    if tidy:
        store.delete_many(stale)
    if claimed is not None and (claimed <= position or any(start < claimed for start, _ in ahead)):
        claimed = None  # not a range of the hole's
    return position, claimed, ahead


def claimed_end(store: Storage, key: str) -> int | None:
    """A claim's end, or None when the claim cannot be read (damaged, or not a claim): its range is then
    detected as one of the run's own, and screening lands each frame the killed run landed once."""
    try:
        return int(json.loads(store.get(key))["end"])
    except (BadObject, ValueError, KeyError, TypeError):
        return None
