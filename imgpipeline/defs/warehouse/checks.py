"""Asset checks of the warehouse: pure functions over stored tables, reported as asset checks."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from imgpipeline.defs.records.record import OUT_OF_RANGE, LandingRecord
from imgpipeline.defs.tables import DETECTIONS_SCHEMA, FRAMES_SCHEMA, IDENTITY
from imgpipeline.defs.tables.checks import SCHEMA_AS_DECLARED, schema_problems

# What each check proves, as the UI shows it beside the asset.
CHECKS = {
    "frames": {
        "schema_as_declared": SCHEMA_AS_DECLARED,
        "no_duplicate_frame": "Each frame (source_id, frame_id) appears once per hour: retried runs and "
                              "replays add no rows.",
        "matches_landing": "The hour's rows are exactly the distinct frames of its landing metadata: "
                           "nothing landed is missing, nothing is extra.",
        "captured_in_range": "No frame of the hour was captured out of range (before the partitions' start, "
                             "too far ahead of the broker's time, or in a day whose landing retention "
                             "deleted): such frames are rows with status out_of_range in the hour they "
                             "reached the broker, counted here (a warning).",
    },
    "detections": {
        "schema_as_declared": SCHEMA_AS_DECLARED,
        "matches_frames": "The hour's detection rows add up to the object counts of its frames.",
    },
    "daily_summary": {
        "schema_as_declared": "The stored Parquet of every day has exactly the declared columns and types.",
        "totals_match_hourly": "The day's objects and frames per source and detector identity (model, "
                               "engine, precision) equal the hourly tables' rows.",
    },
}


# Checks that report what the data says about its sources rather than a fault of the pipeline.
WARNINGS = frozenset({("frames", "captured_in_range")})


def check_hour(key: str, frames: pa.Table, detections: pa.Table, landed: dict, failures: dict) -> None:
    """Record what is wrong with one stored hour of frames and detections under its partition key;
    `landed`: the stored frames against the landing (landing_mismatch's figures, and `builds` when the
    tables are not both of the build that made them)."""
    if problems := schema_problems(frames, FRAMES_SCHEMA):
        failures["frames", "schema_as_declared"][key] = problems
    if dupes := duplicate_frames(frames):
        failures["frames", "no_duplicate_frame"][key] = dupes[:20]
    if (landed["missing"] or landed["extra"] or landed.get("builds")
            or frames.num_rows != landed["distinct_landed"]):
        failures["frames", "matches_landing"][key] = {**landed, "rows": frames.num_rows}
    if out := out_of_range(frames):
        failures["frames", "captured_in_range"][key] = {"frames": len(out), "first": out[:20]}
    if problems := schema_problems(detections, DETECTIONS_SCHEMA):
        failures["detections", "schema_as_declared"][key] = problems
    expected = sum(frames.column("object_count").to_pylist())
    if detections.num_rows != expected:
        failures["detections", "matches_frames"][key] = f"{detections.num_rows} rows, frames say {expected}"


def frame_names(table: pa.Table) -> list[str]:
    """`<source_id>/<frame_id>` of each row: a frame's identity, as the checks report it."""
    return [f"{s}/{f}" for s, f in zip(table.column("source_id").to_pylist(),
                                       table.column("frame_id").to_pylist(), strict=True)]


def duplicate_frames(table: pa.Table) -> list[str]:
    counted = table.group_by(["source_id", "frame_id"]).aggregate([([], "count_all")])
    return sorted(set(frame_names(counted.filter(pc.greater(counted.column("count_all"), 1)))))


def out_of_range(table: pa.Table) -> list[str]:
    """The frames of a table recorded as captured out of range."""
    return frame_names(table.filter(pc.equal(table.column("status"), OUT_OF_RANGE)))


def landing_mismatch(table: pa.Table, records: list[LandingRecord]) -> dict:
    """Frames missing from the table or extra in it, against the distinct landed frames."""
    stored = set(frame_names(table))
    landed = {f"{r.source_id}/{r.frame_id}" for r in records}
    return {"missing": sorted(landed - stored), "extra": sorted(stored - landed),
            "rows": table.num_rows, "distinct_landed": len(landed)}


def summary_mismatch(summary: pa.Table, frames: pa.Table, detection_rows: int) -> list[str]:
    """Where a day's summary disagrees with the hourly tables it was computed from: its frames, and the
    number of its detection rows."""
    problems = []
    if sum(summary.column("objects").to_pylist()) != detection_rows:
        problems.append(f"objects {sum(summary.column('objects').to_pylist())} != "
                        f"{detection_rows} detection rows")
    keys = ["source_id", *IDENTITY]
    per_source = {}
    for row in summary.select([*keys, "frames"]).to_pylist():
        per_source["/".join(str(row[k]) for k in keys)] = row["frames"]
    counted: dict[str, int] = {}
    for row in frames.select(keys).to_pylist():
        key = "/".join(str(row[k]) for k in keys)
        counted[key] = counted.get(key, 0) + 1
    if per_source != counted:
        problems.append(f"frames per source {per_source} != hourly rows {counted}")
    return problems
