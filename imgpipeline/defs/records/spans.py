"""Compacted landing files: a partition's files of an hour written as one, named after the span of
their ranges (docs/operations.md: landing compacted)."""

from __future__ import annotations

import hashlib
import tempfile
from datetime import datetime

from imgpipeline.defs.records.keys import landing_key, range_name
from imgpipeline.resources.storage import Storage


def span_key(hour: datetime, group: tuple[str, int, int], files: list[tuple[int, int, str]]) -> str:
    """The landing key of a partition's files of an hour compacted: named after the span of their ranges."""
    topic, partition, generation = group
    return landing_key(hour, range_name(topic, partition, files[0][0], max(end for _, end, _ in files),
                                        generation))


def compact_files(store: Storage, hour: datetime, group: tuple[str, int, int],
                  files: list[tuple[int, int, str]]) -> str:
    """One file of a partition's landing files of an hour, named after the span of their ranges: their
    lines in range order, a line two of them share once. Returns its key; the files stay. One file is
    in memory at a time, and a 16-byte digest of each line: the rest waits in a temporary file."""
    into = span_key(hour, group, files)
    seen, digest = set(), hashlib.sha256()
    with tempfile.TemporaryFile() as spooled:
        for *_, key in files:
            for line in store.get(key).splitlines():
                mark = hashlib.blake2b(line, digest_size=16).digest()
                if line.strip() and mark not in seen:
                    seen.add(mark)
                    spooled.write(line + b"\n")
                    digest.update(line + b"\n")
        spooled.seek(0)
        store.put_file(into, spooled, sha256=digest.hexdigest())
    return into
