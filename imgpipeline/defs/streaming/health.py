"""How the sources are doing: who sent frames lately, how many came in and were processed, and what
became of them. `imgpipeline status` prints it; the asset check `sources_fresh` fails on a silent one.

A source is known once a run recorded it (`landing/sources/<source_id>.json`); it stays known until
that file is deleted, so a camera that died a week ago is still reported silent.
"""

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from imgpipeline.defs.records.reader import hour_records
from imgpipeline.defs.streaming.landing import known_sources
from imgpipeline.defs.tables import TOPIC_ASSET
from imgpipeline.ingest.messages import parse_time
from imgpipeline.lib.stats import percentile
from imgpipeline.resources import StorageResource
from imgpipeline.resources.settings import FromEnv, setting
from imgpipeline.resources.storage import Storage

# How far the store's clock (which dates a landing file's last write) may be behind the runs' clock
# (which stamps processed_at): a file written this long before the window began is still read.
CLOCK_SLACK = timedelta(minutes=5)


class SourcePolicy(FromEnv, dg.ConfigurableResource):
    """When a source counts as silent."""

    silent_after_min: float = setting(
        "IMGPIPELINE_SOURCE_SILENT_MIN", 10.0,
        "a source none of whose frames reached the broker for this many minutes is silent: it fails "
        "the check sources_fresh and `imgpipeline status`", gt=0)


@dataclass
class SourceActivity:
    """One source: its latest times, and what its frames did in the window."""

    source_id: str
    last: dict
    came_in: int = 0  # frames that reached the broker in the window (and have been processed)
    statuses: Counter = field(default_factory=Counter)  # frames processed in the window, by status
    # Seconds from reaching the broker to processed, of each frame processed in the window.
    waits: list[float] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return sum(self.statuses.values())

    def share(self, status: str) -> float:
        return self.statuses[status] / self.processed if self.processed else 0.0

    def wait(self, q: float) -> float | None:
        """The q-quantile of the window's waits, None without one."""
        return percentile(self.waits, q) if self.waits else None

    def silent_for(self, now: datetime) -> timedelta | None:
        """Since the latest of its frames reached the broker (None: never recorded)."""
        latest = self.last.get("ingested_at")
        return now - parse_time(latest) if latest else None


def source_activity(store: Storage, now: datetime, window: timedelta,
                    slack: timedelta = CLOCK_SLACK) -> list[SourceActivity]:
    """Every known source, with the frames of the window: landed in the event-time hours it covers, in
    the files written since the window began (an empty window reads no landing file: the latest times
    alone). A file last written before then holds only records processed before then: at 1,000 frames/s
    that leaves the window's frames to read, not its hours' millions."""
    sources = {name: SourceActivity(name, times) for name, times in known_sources(store).items()}
    since = now - window
    hour = since.replace(minute=0, second=0, microsecond=0)
    while window > timedelta(0) and hour <= now:
        seen = set()  # a record in two files (a compaction cut short) counts once
        for record in hour_records(store, hour, written_since=since - slack):
            activity = sources.get(record.source_id)
            once = (record.identity, record.processed_at, record.offset, record.run_id)
            if activity is None or record.schema is None or once in seen:
                continue
            seen.add(once)
            if record.ingested_at and since <= parse_time(record.ingested_at) <= now:
                activity.came_in += 1
            if record.processed_at and since <= (processed := parse_time(record.processed_at)) <= now:
                activity.statuses[record.status] += 1
                if record.ingested_at:
                    activity.waits.append((processed - parse_time(record.ingested_at)).total_seconds())
        hour += timedelta(hours=1)
    return sorted(sources.values(), key=lambda a: a.source_id)


def silent_sources(activity: list[SourceActivity], now: datetime, after_min: float) -> dict[str, float]:
    """The sources silent for longer than `after_min`: minutes since their latest frame."""
    silent = {}
    for source in activity:
        gap = source.silent_for(now)
        if gap is not None and gap > timedelta(minutes=after_min):
            silent[source.source_id] = round(gap.total_seconds() / 60, 1)
    return silent


@dg.asset_check(
    asset=TOPIC_ASSET,
    name="sources_fresh",
    description="Every known source sent a frame within IMGPIPELINE_SOURCE_SILENT_MIN minutes (the "
                "broker's time of its latest processed frame). Fails naming the silent ones; a frame "
                "waiting unprocessed does not count, so a stuck pipeline fails it too.",
)
def sources_fresh(storage: StorageResource, source_policy: SourcePolicy) -> dg.AssetCheckResult:
    policy = source_policy
    now = datetime.now(UTC)
    activity = source_activity(storage.open(), now, timedelta(0))
    silent = silent_sources(activity, now, policy.silent_after_min)
    return dg.AssetCheckResult(
        passed=not silent,
        severity=dg.AssetCheckSeverity.WARN,
        description=(f"{len(silent)} of {len(activity)} sources silent for over "
                     f"{policy.silent_after_min:g} min: {', '.join(sorted(silent))}" if silent
                     else f"all {len(activity)} sources sent a frame within {policy.silent_after_min:g} min"),
        metadata={
            "sources": dg.MetadataValue.int(len(activity)),
            "silent_minutes": dg.MetadataValue.json(silent),
            "last_frame": dg.MetadataValue.json({a.source_id: a.last.get("ingested_at") for a in activity}),
        },
    )


check_sources = dg.define_asset_job(
    "check_sources", selection=dg.AssetSelection.checks(sources_fresh),
    description="Checks that every known source sent a frame lately.",
)

check_sources_schedule = dg.ScheduleDefinition(
    job=check_sources, cron_schedule="*/5 * * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
