"""Where landing records lie: the names of the landing files under `landing/metadata/` (docs/contracts.md).

A run lands one JSON-lines file per event-time hour it saw, named after its offset range:
`landing/metadata/dt=<date>/hour=<HH>/<topic>-<partition>-<start>-<end>.jsonl` (`uris-<hash>.jsonl`
for a run over explicit frame URIs), so re-running a range rewrites the same files.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

from imgpipeline.defs.hours import hour_path
from imgpipeline.ingest.messages import sha256_hex

LANDING = "landing/metadata"


def range_name(topic: str, partition: int, start: int, end: int, generation: int = 0) -> str:
    """`<topic>-<partition>-<start>-<end>`: a range's landing file name and its run key; after the
    topic's offsets were reset (`-g<generation>`), so reused offsets never collide with old ones."""
    return f"{topic}-{partition}-{start}-{end}" + (f"-g{generation}" if generation else "")


def uris_name(uris: list[str]) -> str:
    """`uris-<hash>`: the landing file name of a run over explicit frame URIs (same URIs, same name)."""
    return f"uris-{sha256_hex(json.dumps(sorted(uris)).encode())[:16]}"


def landing_key(hour: datetime, name: str) -> str:
    return f"{LANDING}/{hour_path(hour)}/{name}.jsonl"


RANGE_NAME = re.compile(r"(.+)-([0-9]+)-([0-9]+)-([0-9]+)(?:-g([0-9]+))?")


def ranges_of(keys) -> dict[tuple[str, int, int], list[tuple[int, int, str]]]:
    """Landing files named after ranges, per (topic, partition, generation): (start, end, key) in range
    order. Files of runs over explicit URIs are not among them."""
    groups: dict[tuple[str, int, int], list[tuple[int, int, str]]] = {}
    for key in keys:
        if (found := RANGE_NAME.fullmatch(key.rsplit("/", 1)[-1].removesuffix(".jsonl"))) is not None:
            topic, partition, start, end, generation = found.groups()
            group = (topic, int(partition), int(generation or 0))
            groups.setdefault(group, []).append((int(start), int(end), key))
    return {group: sorted(files) for group, files in groups.items()}
