"""Landing compacted: an hour's landing files become one file per partition of the frames topic once
the hour's tables are built and their checks passed.

A run lands one file per event-time hour it touched, named after its range: at 1,000 frames/s some
2,000 files an hour, each listed by every whole build of the hour and kept until retention. Every hour
(`compact_landing_schedule`), the hours that ended at least IMGPIPELINE_COMPACT_AFTER_H hours ago (and
within two days before that) whose last build read them and passed its checks have each partition's
files (`<topic>-<partition>-<start>-<end>[-g<N>].jsonl`) written as one,
`<topic>-<partition>-<first start>-<last end>[-g<N>].jsonl`: the same lines in range order, a line
that two files share (a compaction cut short, then run again) once. The files of runs over explicit
URIs (`uris-…`) stay as they are. It is a range name like any other: the warehouse reads it the same
way, duplicate screening takes it as the partition's neighbour, and a late frame lands in a file of its
own beside it and makes the hour again. The range ledger is folded the same way already (records/ledger.py);
its entries keep the names of the files their ranges wrote, since compacted into these.

Each compacted file is written before its originals are deleted, and an original is deleted only while
it is what was read (its version in the listing unchanged): a compaction killed at any point leaves
lines twice at worst, which every reader takes once (a frame is its source and id), and the next
compaction of the hour finishes it. When nothing landed in the hour since its build, the build's record
is brought up to date with the compacted files, so the hour can still be extended by late files.
"""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import dagster as dg

from imgpipeline.defs.hours import hour_key
from imgpipeline.defs.partitions import scheduled_job
from imgpipeline.defs.records.keys import ranges_of
from imgpipeline.defs.records.reader import landing_versions
from imgpipeline.defs.records.retired import is_retired
from imgpipeline.defs.records.runs import detect_runs_in_flight
from imgpipeline.defs.records.spans import compact_files, span_key
from imgpipeline.defs.tables import DETECTIONS, FRAMES
from imgpipeline.defs.warehouse.builds import Build, built_by
from imgpipeline.resources import StorageResource
from imgpipeline.resources.settings import FromEnv, setting
from imgpipeline.resources.storage import BadObject, Storage

LOOKBACK = timedelta(days=2)  # hours older than this past the wait are left as they are


class Compaction(FromEnv, dg.ConfigurableResource):
    after_h: float = setting(
        "IMGPIPELINE_COMPACT_AFTER_H", 2,
        "hours after an hour's end before its landing files are compacted into one per partition, once "
        "its tables are built and their checks passed (late frames still land beside it); 0: never",
        ge=0)

    def hours(self, now: datetime) -> list[datetime]:
        """The hours a compaction at `now` looks at, oldest first."""
        if not self.after_h:
            return []
        last = (now - timedelta(hours=self.after_h + 1)).replace(minute=0, second=0, microsecond=0)
        hour, found = last - LOOKBACK, []
        while hour <= last:
            found.append(hour)
            hour += timedelta(hours=1)
        return found


Range = tuple[str | None, int, int, int, int]  # topic (None: the default), partition, generation, start, end


def compact_hour(store: Storage, hour: datetime, busy: list[Range] = ()) -> tuple[int, int] | str:
    """Compact one hour's landing: (files before, files after), or why it was left as it is. Only an
    hour whose files are those its last build read (less what a compaction cut short already folded
    into a span) and whose tables are that build's; a partition a queued or running detect_frames run
    may still write to (`busy`: its range overlaps the files') waits for the next time."""
    if is_retired(store, hour.date()):
        return "its day's landing was retired"
    build = Build.read(store, hour)
    if build is None or not build.passed:
        return "no build of it passed its checks"
    listing = landing_versions(store, hour)
    spans = {group: span_key(hour, group, files) for group, files in ranges_of(build.landing).items()}
    if why := unlike_build(build, listing, spans):
        return why
    todo = {group: files for group, files in ranges_of(listing).items()
            if len(files) > 1 and not overlaps(group, files, busy)}
    if not todo and set(listing) == set(build.landing):
        return "compacted already"  # the usual answer, from listings alone: no table is read
    try:
        if not all(built_by(t.read(store, t.hour_key(hour))) == build.id for t in (FRAMES, DETECTIONS)):
            return "its tables are not those of its build"
    except BadObject:
        return "its tables are not stored"
    written = {}
    for group, files in todo.items():
        into = compact_files(store, hour, group, files)
        written[into] = [key for *_, key in files if key != into]
    now = landing_versions(store, hour)
    # Only what was read goes: a file written again meanwhile (a range run again) stays for the next.
    store.delete_many([key for keys in written.values() for key in keys if now.get(key) == listing[key]])
    after = landing_versions(store, hour)
    record = {key: tag for key, tag in after.items()
              if key in written or key in spans.values() or build.landing.get(key) == tag}
    if record != build.landing:
        replace(build, landing=record).write(store, hour)
    return (len(listing), len(after)) if written else "compacted already"


def unlike_build(build: Build, listing: dict[str, str], spans: dict) -> str | None:
    """Why the hour's files are not those its build read, or None: each recorded file is there unchanged,
    or gone into its partition's span (a compaction cut short), and nothing else is there."""
    into = set(spans.values())
    for key, tag in build.landing.items():
        group = next(iter(ranges_of([key])), None)
        if listing.get(key) != tag and key not in into and not (key not in listing and spans.get(group)
                                                                in listing):
            return "a file it was built from changed or went since its build: it is made again first"
    if set(listing) - set(build.landing) - into:
        return "files landed since its build: it is made again first"
    return None


def overlaps(group: tuple[str, int, int], files: list[tuple[int, int, str]], busy: list[Range]) -> bool:
    topic, partition, generation = group
    first, last = files[0][0], max(end for _, end, _ in files)
    return any(t in (None, topic) and (p, g) == (partition, generation) and start < last and end > first
               for t, p, g, start, end in busy)


def running_ranges(instance: dg.DagsterInstance) -> list[Range]:
    """The offset ranges of the detect_frames runs queued or running."""
    found = []
    for run in detect_runs_in_flight(instance):
        config = run.run_config.get("ops", {}).get("detect", {}).get("config", {})
        if "end_offset" in config and not config.get("uris"):
            found.append((config.get("topic"), config.get("partition", 0), config.get("generation", 0),
                          config["start_offset"], config["end_offset"]))
    return found


def compact(store: Storage, compaction: Compaction, now: datetime, log=print,
            busy: list[Range] = ()) -> dict[str, int]:
    """Compact the landing of every hour due; how many hours, files before and after."""
    totals = {"hours": 0, "files_before": 0, "files_after": 0}
    for hour in compaction.hours(now):
        done = compact_hour(store, hour, busy)
        if isinstance(done, tuple):
            totals["hours"] += 1
            totals["files_before"] += done[0]
            totals["files_after"] += done[1]
            log(f"{hour_key(hour)}: {done[0]} landing files compacted into {done[1]}")
    return totals


@dg.op(description="Compacts the landing files of each hour due (built, checks passed, "
                   "IMGPIPELINE_COMPACT_AFTER_H past its end) into one per partition of the frames topic.")
def compact_landing_op(context: dg.OpExecutionContext, storage: StorageResource,
                       compaction: Compaction) -> dg.Output[dict]:
    totals = compact(storage.open(), compaction, datetime.now(UTC), log=context.log.info,
                     busy=running_ranges(context.instance))
    return dg.Output(totals, metadata={name: dg.MetadataValue.int(n) for name, n in totals.items()})


compact_landing_job, compact_landing_schedule = scheduled_job(
    "compact_landing", compact_landing_op, "25 * * * *",
    "Compacts each hour's landing files into one per partition once its tables are built and their checks "
    "passed.")
