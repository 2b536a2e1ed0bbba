"""An hour's tables made whole from its landing, or extended by the landing files added since.

Every build of an hour records, at `warehouse/builds/dt=YYYY-MM-DD/hour=HH.json`, the landing files it
read (each with the tag of its version in the store's listing), the frames they held, and an id also
written into the metadata of its tables' Parquet (class_hours' too). The next run of that hour alone
lists the hour's landing and, when every recorded file is still there unchanged and both tables (frames
and detections) carry the recorded id,
reads only the new files: their frames are merged into the stored tables in the tables' order, and
their detections are tracked on from the stored end of the hour. It makes the hour whole instead when
a recorded file changed or went (a range run again), a new frame is already in the tables (landed
again), a source with objects detected in the hour has new detected frames not all captured after its
stored ones (late frames: the tracks would not follow capture order), the hour is marked to be tracked
again, or the run covers more than one hour (backfills). Either way the same rows come out in the
same order; track ids can differ from a whole rebuild's only where the tracker would have decided
otherwise with the whole hour behind it.

A build also records its base: the whole build its extensions go back to (a whole build is its own
base), written into the detections' metadata too. While the base stays, no stored row changes: each
extension only adds rows, and a source with objects only after its stored ones, so what read the
detections under that base (the hour's tracks) reads only the rows added since.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from imgpipeline.defs.hours import hour_path
from imgpipeline.defs.records.reader import landing_versions, read_records
from imgpipeline.defs.records.record import LandingRecord
from imgpipeline.defs.tables import CLASS_HOURS, DETECTIONS, FRAMES
from imgpipeline.defs.warehouse import rows, sql, tracked
from imgpipeline.defs.warehouse.checks import landing_mismatch
from imgpipeline.resources.storage import BadObject, Storage
from imgpipeline.vision.tracking import TrackerSettings

BUILDS = "warehouse/builds"
# Raised whenever what a build makes of the same landing changes (rows.py, the tracker's settings of
# use, the tables' order): an hour recorded by another version of the code is made whole, never extended
# into a mix of the two. The tables' schemas count too.
LOGIC = 1
BUILT_BY = sql.BUILT_BY.encode()
BASED_ON = b"imgpipeline.base"
FRAME_ORDER = [("captured_at", "ascending"), ("source_id", "ascending"), ("frame_id", "ascending")]
DETECTION_ORDER = [*FRAME_ORDER, ("detection_index", "ascending")]


def code_version() -> str:
    """What a build's rows depend on in the code: LOGIC and both tables' schemas."""
    return hashlib.sha256(f"{LOGIC}|{FRAMES.schema}|{DETECTIONS.schema}".encode()).hexdigest()[:16]


def build_key(hour: datetime) -> str:
    return f"{BUILDS}/{hour_path(hour)}.json"


@dataclass(frozen=True)
class Build:
    """What one build of an hour read: landing key → version tag, the distinct frames they held, and
    whether the checks of the tables it made passed."""

    id: str
    landing: dict[str, str]
    frames: int
    passed: bool = False
    version: str = field(default_factory=lambda: code_version())
    base: str = ""  # the whole build this one extends (its own id when whole); "" when not recorded

    def write(self, store: Storage, hour: datetime) -> None:
        store.put(build_key(hour), json.dumps({"id": self.id, "frames": self.frames, "passed": self.passed,
                                               "version": self.version, "base": self.base,
                                               "landing": self.landing}).encode())

    def checked(self, passed: bool) -> Build:
        return replace(self, passed=passed)

    @classmethod
    def read(cls, store: Storage, hour: datetime) -> Build | None:
        try:
            written = json.loads(store.get(build_key(hour)))
            return cls(str(written["id"]), dict(written["landing"]), int(written["frames"]),
                       written.get("passed") is True, str(written.get("version")),
                       str(written.get("base") or ""))
        except (BadObject, FileNotFoundError, KeyError, TypeError, ValueError):
            return None  # none yet, or not one this code wrote: the hour is made whole


@dataclass
class Made:
    """An hour's tables as a build made them, with what its checks compare them to."""

    frames: pa.Table
    detections: pa.Table
    seed: str
    build: Build
    records: list[LandingRecord]  # what was read: the hour's landing (whole), the new files' (extended)
    added: int  # landing files read
    whole: str | None = None  # why the hour was made whole; None when extended

    def against_landing(self, frames: pa.Table, detections: pa.Table) -> dict:
        """The stored tables against what was read (the check matches_landing's figures): made whole,
        against every landing record of the hour; extended, the new files' frames must each be a row and
        the rows as many as the build's frames before plus theirs. Both tables must be of this build."""
        if self.whole is not None:
            found = landing_mismatch(frames, self.records)
        else:
            missing = {r.identity for r in self.records} - present(frames, self.records)
            found = {"missing": sorted(f"{s}/{f}" for s, f in missing), "extra": [], "rows": frames.num_rows,
                     "distinct_landed": self.build.frames}
        if not built_by(frames) == built_by(detections) == self.build.id:
            found["builds"] = (f"frames of build {built_by(frames)}, detections of build "
                               f"{built_by(detections)}, recorded {self.build.id}")
        return found


HOURLY = (FRAMES, DETECTIONS, CLASS_HOURS)  # the tables a build writes, in the order it writes them


def write_tables(store: Storage, hour: datetime, made: Made) -> None:
    """The hour's frames, detections and class_hours, each stamped with the build. class_hours last: a
    build cut short before it leaves one of an older build, which the daily summary does not read."""
    for table, rows_ in zip(HOURLY, (made.frames, made.detections, sql.class_hours(made.detections)),
                            strict=True):
        table.write(store, table.hour_key(hour), stamped(rows_, made.build, made.seed))


def stamped(table: pa.Table, build: Build, seed: str) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), tracked.SEEDED_FROM: seed.encode(),
                                          BUILT_BY: build.id.encode(), BASED_ON: build.base.encode()})


def built_by(table: pa.Table) -> str | None:
    return (table.schema.metadata or {}).get(BUILT_BY, b"").decode() or None


def based_on(table: pa.Table) -> str | None:
    """The base build of a stored hour's tables (None when not recorded): rows of one base are never
    changed, only added to."""
    return (table.schema.metadata or {}).get(BASED_ON, b"").decode() or None


def tables_of(latest: list[LandingRecord], track_ids: tracked.TrackIds) -> tuple[pa.Table, pa.Table]:
    """An hour's frames and detections of deduplicated records, in the tables' order."""
    return (rows.frames_table(latest).sort_by(FRAME_ORDER),
            rows.detections_table(latest, track_ids).sort_by(DETECTION_ORDER))


def whole(store: Storage, hour: datetime, landing: dict[str, str], records: list[LandingRecord],
          settings: TrackerSettings, why: str) -> Made:
    """The hour made from all of its landing records (`landing`: the files they were read from)."""
    latest = rows.latest_per_frame(records)
    track_ids, seed = tracked.track_hour(store, hour, latest, settings)
    frames, detections = tables_of(latest, track_ids)
    made = uuid.uuid4().hex
    build = Build(made, landing, frames.num_rows, base=made)
    return Made(frames, detections, seed, build, records, len(landing), why)


def extend(store: Storage, hour: datetime, settings: TrackerSettings) -> Made | str:
    """The hour's stored tables with the landing files added since their build; or, when it cannot be
    extended, why it is made whole."""
    build = Build.read(store, hour)
    if build is None:
        return "no build of it is recorded"
    if build.version != code_version():
        return "another version of the code built it"
    if store.exists(tracked.retrack_key(hour)):
        return "it is marked to be tracked again"
    listing = landing_versions(store, hour)
    if changed := [key for key, tag in build.landing.items() if listing.get(key) != tag]:
        return f"{len(changed)} landing file(s) it was built from changed or went"
    try:
        frames, detections = (t.read(store, t.hour_key(hour)) for t in (FRAMES, DETECTIONS))
    except BadObject:
        return "its tables are not stored"
    if not built_by(frames) == built_by(detections) == build.id:
        return "its tables are not those of the recorded build"
    new = sorted(set(listing) - set(build.landing))
    if not new:
        return Made(frames, detections, tracked.seeded_from(detections) or "none", build, [], 0)
    latest = rows.latest_per_frame([r for key in new for r in read_records(store, key)])
    if again := landed_again(frames, latest):
        return f"{again} frame(s) landed again"
    landed = tracked.landed_frames(latest)
    if late := late_sources(frames, detections, landed):
        return f"frames of {late} captured before its stored ones"
    new_frames, new_detections = tables_of(latest, tracked.track_more(store, hour, frames, detections,
                                                                       landed, settings))
    seed = tracked.seeded_from(detections) or "none"
    frames = pa.concat_tables([frames.replace_schema_metadata(None), new_frames]).sort_by(FRAME_ORDER)
    detections = pa.concat_tables([detections.replace_schema_metadata(None),
                                   new_detections]).sort_by(DETECTION_ORDER)
    made_id = uuid.uuid4().hex
    made = Build(made_id, {**build.landing, **{key: listing[key] for key in new}},
                 build.frames + new_frames.num_rows, base=build.base or made_id)
    return Made(frames, detections, seed, made, latest, len(new))


def present(frames: pa.Table, latest: list[LandingRecord]) -> set[tuple]:
    """Which of the records' frames (source_id, frame_id) a table holds: only rows with their ids are
    looked at."""
    if not latest:
        return set()
    ids = pa.array(sorted({r.frame_id for r in latest}), pa.string())
    candidates = frames.filter(pc.is_in(frames.column("frame_id"), ids))
    found = set(zip(candidates.column("source_id").to_pylist(), candidates.column("frame_id").to_pylist(),
                    strict=True))
    return found & {r.identity for r in latest}


def landed_again(frames: pa.Table, latest: list[LandingRecord]) -> int:
    return len(present(frames, latest))


def late_sources(frames: pa.Table, detections: pa.Table,
                 landed: dict[str, list[tracked.TrackedFrame]]) -> str | None:
    """The first source whose new detected frames do not all come after its stored detected ones. A
    source with no object detected in the hour, stored or new, has no track whatever the order."""
    with_objects = set(pc.unique(detections.column("source_id")).to_pylist()) | {
        source for source, new in landed.items() if any(f.observations for f in new)}
    landed = {source: new for source, new in landed.items() if source in with_objects}
    detected = frames.filter(pc.equal(frames.column("status"), "detected"))
    if not landed or detected.num_rows == 0:
        return None
    last = detected.group_by("source_id").aggregate([("captured_at", "max")])
    latest = dict(zip(last.column("source_id").to_pylist(), last.column("captured_at_max").to_pylist(),
                      strict=True))
    for source, new in landed.items():
        # stored times are whole milliseconds: a new frame within the stored last one's is late too
        if source in latest and new[0].seconds < latest[source].timestamp() + 0.001:
            return source
    return None
