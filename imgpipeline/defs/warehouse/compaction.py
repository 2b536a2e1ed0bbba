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
own beside it and makes the hour again. The range ledger is folded the same way already (ledger.py);
its entries keep the names of the files their ranges wrote, since compacted into these.

Each compacted file is written before its originals are deleted, and an original is deleted only while
it is what was read (its version in the listing unchanged): a compaction killed at any point leaves
lines twice at worst, which every reader takes once (a frame is its source and id), and the next
compaction of the hour finishes it. When nothing landed in the hour since its build, the build's record
is brought up to date with the compacted files, so the hour can still be extended by late files.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import BaseModel, ConfigDict

from imgpipeline.defs.hours import hour_key
from imgpipeline.defs.partitions import scheduled_job
from imgpipeline.defs.streaming.landing import compact_files, is_retired, landing_versions, ranges_of
from imgpipeline.defs.warehouse.builds import Build
from imgpipeline.resources import StorageResource
from imgpipeline.resources.settings import FromEnv, setting

LOOKBACK = timedelta(days=2)  # hours older than this past the wait are left as they are


class Compaction(FromEnv, BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

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


def compact_hour(store, hour: datetime) -> tuple[int, int] | str:
    """Compact one hour's landing: (files before, files after), or why it was left as it is."""
    if is_retired(store, hour.date()):
        return "its day's landing was retired"
    build = Build.read(store, hour)
    if build is None or not build.passed:
        return "no build of it passed its checks"
    listing = landing_versions(store, hour)
    todo = {group: files for group, files in ranges_of(listing).items() if len(files) > 1}
    if not todo:
        return "compacted already"
    written = {}
    for group, files in todo.items():
        into = compact_files(store, hour, group, files)
        written[into] = [key for *_, key in files if key != into]
    now = landing_versions(store, hour)
    # Only what was read goes: a file written again meanwhile (a range run again) stays for the next.
    store.delete_many([key for keys in written.values() for key in keys if now.get(key) == listing[key]])
    if build.landing == listing:  # the build read exactly these: it reads the same from the compacted
        after = landing_versions(store, hour)
        kept = {key: tag for key, tag in after.items() if key in written or listing.get(key) == tag}
        Build(build.id, kept, build.frames, build.passed).write(store, hour)
    return len(listing), len(landing_versions(store, hour))


def compact(store, compaction: Compaction, now: datetime, log=print) -> dict[str, int]:
    """Compact the landing of every hour due; how many hours, files before and after."""
    totals = {"hours": 0, "files_before": 0, "files_after": 0}
    for hour in compaction.hours(now):
        done = compact_hour(store, hour)
        if isinstance(done, tuple):
            totals["hours"] += 1
            totals["files_before"] += done[0]
            totals["files_after"] += done[1]
            log(f"{hour_key(hour)}: {done[0]} landing files compacted into {done[1]}")
    return totals


@dg.op(description="Compacts the landing files of each hour due (built, checks passed, "
                   "IMGPIPELINE_COMPACT_AFTER_H past its end) into one per partition of the frames topic.")
def compact_landing_op(context: dg.OpExecutionContext, storage: StorageResource) -> dg.Output[dict]:
    compaction = Compaction.from_env()
    totals = compact(storage.open(), compaction, datetime.now(UTC), log=context.log.info)
    return dg.Output(totals, metadata={name: dg.MetadataValue.int(n) for name, n in totals.items()})


compact_landing_job, compact_landing_schedule = scheduled_job(
    "compact_landing", compact_landing_op, "25 * * * *",
    "Compacts each hour's landing files into one per partition once its tables are built and their checks "
    "passed.")
