"""Re-detection: stored frames of an hour detected again with a named model, tracked, and written
beside the live detections, never over them.

Frames are read from storage by their landing records (the hour's latest record of each frame, as
the warehouse takes it), never from Kafka: a range is re-detected as long as its frames and landing
are kept. Each model's rows go to `warehouse/redetections/dt=…/hour=…/model-NAME.parquet`, in the
columns of `detections` (their identity columns naming the model, its sha256, engine and precision),
tracked on from the previous hour's re-detections of the same model as the live detections are. An hour
already re-detected from the same landing files, by the same model file at the same settings, after the
same previous hour, is left as it is, so a backfill resumed after a kill does only what is left. An hour
some of whose frames could not be read is never taken as made: the next run of it tries them again.
Each file also records, per source, how many frames it detected again and how many it could not read
(`FRAMES_DONE`), so that a comparison can tell an hour re-detected whole from one re-detected while its
landing was still growing or with frames missing (`history.model_hours`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pyarrow as pa

from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.defs.tables import DETECTIONS_SCHEMA, REDETECTIONS
from imgpipeline.defs.warehouse import tracked
from imgpipeline.defs.warehouse.rows import detections_table, latest_per_frame
from imgpipeline.ingest.messages import sha256_hex
from imgpipeline.resources.storage import BadObject, Storage

# What a file was made from, in its Parquet metadata: the hour's landing files and the model file.
MADE_FROM = b"imgpipeline.made_from"
# The sources an hour was re-detected for alone (empty: all of them), in its Parquet metadata.
SOURCES = b"imgpipeline.sources"
# Per source, the frames re-detected and those that could not be read: JSON {source: [detected, missing]}.
FRAMES_DONE = b"imgpipeline.frames"


def part_key(hour: datetime, model: str) -> str:
    return REDETECTIONS.hour_key(hour, f"model-{model}")


@dataclasses.dataclass
class Redetected:
    """What re-detecting an hour did."""

    frames: int = 0  # frames detected again
    detections: int = 0
    missing: list[str] = dataclasses.field(default_factory=list)  # frames whose bytes could not be read
    kept: bool = False  # already made from the same landing and model file: left as it was


def made_from(listing: dict[str, str], how: dict, seed: str, sources: list[str] | None) -> str:
    """The digest of what an hour's re-detections are made from: its landing files (with their
    versions), how they are detected and tracked (`how`: the detector's identity, thresholds and class
    filter, the tracker's settings), the previous hour's re-detections they continue (`seed`) and the
    sources."""
    text = json.dumps([sorted(listing.items()), how, seed, sorted(sources or [])], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def stored_origin(store: Storage, key: str) -> str | None:
    if not store.exists(key):
        return None
    metadata = REDETECTIONS.read(store, key).schema.metadata or {}
    return metadata.get(MADE_FROM, b"").decode() or None


def frames_done(table: pa.Table) -> dict[str, list[int]] | None:
    """What a re-detections file records of its frames per source (None for a file made before it did)."""
    text = (table.schema.metadata or {}).get(FRAMES_DONE)
    if not text:
        return None
    found = json.loads(text)
    if not isinstance(found, dict):
        return None
    return {str(s): [int(n) for n in counts] for s, counts in found.items()}


def _frames_done(frames: list[LandingRecord], missing: list[LandingRecord]) -> dict[str, list[int]]:
    counts: dict[str, list[int]] = {}
    for record in frames:
        counts.setdefault(record.source_id, [0, 0])[0] += 1
    for record in missing:
        counts[record.source_id][1] += 1
    return counts


def write_hour(store: Storage, key: str, table: pa.Table, sources: list[str] | None, counts: dict[str,
               list[int]],
               metadata: dict[bytes, bytes]) -> pa.Table:
    """Store an hour's re-detections with their metadata; with `sources`, beside the other sources' rows
    (and counts) the file already had. The table as stored."""
    covered = ",".join(sorted(sources or []))  # empty: every source
    if sources and store.exists(key):  # the other sources' rows as they were
        kept = REDETECTIONS.read(store, key)
        before = (kept.schema.metadata or {}).get(SOURCES, b"").decode()
        covered = before and ",".join(sorted(set(before.split(",")) | set(sources)))
        others = [i for i, source in enumerate(kept.column("source_id").to_pylist()) if source not in sources]
        table = pa.concat_tables([kept.take(others).cast(DETECTIONS_SCHEMA), table])
        counts = {**{s: n for s, n in (frames_done(kept) or {}).items() if s not in sources}, **counts}
    table = table.replace_schema_metadata({**metadata, SOURCES: covered.encode(),
                                           FRAMES_DONE: json.dumps(counts, sort_keys=True).encode()})
    REDETECTIONS.write(store, key, table)
    return table


def seed_of(store: Storage, hour: datetime, model: str) -> str:
    """The digest of the model's re-detections of the hour before, which this hour's tracks continue
    ("none" when there are none)."""
    previous = part_key(hour - timedelta(hours=1), model)
    return tracked.content_digest(REDETECTIONS.read(store, previous)) if store.exists(previous) else "none"


def redetect_hour(store: Storage, hour: datetime, landing: tuple[dict[str, str], list[LandingRecord]], pool,
                  settings, *, model: str, how: dict, max_bytes: int, max_pixels: int | None,
                  sources: list[str] | None = None, log: Callable[[str], None] = print) -> Redetected:
    """Detect an hour's stored frames again with `pool` (the model's detectors), track them on from the
    model's hour before and write them to the model's file of the hour. `sources`: only those sources'
    frames; the file keeps the other sources' rows it already had."""
    from imgpipeline.vision.quality import UndecodableImage, decode_image

    listing, records = landing
    key = part_key(hour, model)
    seed = seed_of(store, hour, model)
    origin = made_from(listing, {**how, **pool.identity.as_record()}, seed, sources)
    done = Redetected()
    if stored_origin(store, key) == origin:
        done.kept = True
        return done
    frames = [r for r in latest_per_frame(records)
              if r.status == "detected" and r.uri and (not sources or r.source_id in sources)]

    unread: list[LandingRecord] = []

    def detect(record: LandingRecord) -> LandingRecord | None:
        try:
            data = store.get(store.key_for(record.uri), max_bytes=max_bytes)
            if record.sha256 and sha256_hex(data) != record.sha256:
                raise BadObject("its bytes do not match the sha256 it landed with")
            found = pool.detect(decode_image(data, max_pixels))
        except (BadObject, UndecodableImage, ValueError) as error:
            done.missing.append(f"{record.source_id}/{record.frame_id}: {error}")
            unread.append(record)
            return None
        return dataclasses.replace(record, detections=[d.as_record() for d in found], object_count=len(found),
                                   **pool.identity.as_record())

    again: list[LandingRecord] = []
    step = max(1, len(frames) // 10)
    with ThreadPoolExecutor(pool.size) as threads:
        for number, record in enumerate(threads.map(detect, frames), 1):
            if record is not None:
                again.append(record)
            if number % step == 0 or number == len(frames):
                log(f"{hour:%Y-%m-%d-%H:00} {model}: {number}/{len(frames)} frames detected again")
    ids, _ = tracked.track_hour(store, hour, again, settings,
                                previous_key=part_key(hour - timedelta(hours=1), model))
    # An hour with frames left unread is not made: its next run reads them again.
    table = write_hour(store, key, detections_table(again, ids), sources, _frames_done(frames, unread), {
        MADE_FROM: b"" if unread else origin.encode(), tracked.SEEDED_FROM: seed.encode()})
    done.frames, done.detections = len(again), table.num_rows
    return done
