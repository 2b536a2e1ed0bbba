"""`imgpipeline redetect --model NAME --from HOUR --to HOUR [--source S]`: a backfill of the model's
`redetections/NAME` asset over the hours, launched by the running daemon (`imgpipeline dev`), one run
per hour; `--wait` follows it to its end.

The backfill shows on the UI's *Backfills* page with its hours' progress; a backfill of hours already
re-detected from the same landing by the same model file leaves them as they are, so running the
command again after a kill or a failure does only what is left.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from imgpipeline import ConfigError
from imgpipeline.defs.hours import hour_key


def parse_hour(text: str, what: str) -> datetime:
    """An hour as `2026-11-20-10:00`, `2026-11-20T10` or `2026-11-20 10:00` (UTC); a day alone is its
    first hour."""
    cleaned = text.strip().replace("T", " ").replace("Z", "")
    for shape in ("%Y-%m-%d-%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d %H", "%Y-%m-%d"):
        try:
            moment = datetime.strptime(cleaned, shape).replace(tzinfo=UTC)
        except ValueError:
            continue
        if moment.minute:
            raise ConfigError(f"{what} {text!r}: give a whole hour, e.g. {moment:%Y-%m-%d-%H}:00")
        return moment
    raise ConfigError(f"{what} {text!r} is not an hour: write it as 2026-11-20-10:00 (UTC)")


def hour_keys(model: str, first: datetime, last: datetime) -> list[str]:
    """The hourly partition keys from `first` to `last`, both included, checked against the partitions."""
    import dagster as dg

    from imgpipeline.defs.partitions import Calendar, hourly_partitions
    from imgpipeline.resources.settings import env_name

    if last < first:
        raise ConfigError(f"--to {hour_key(last)} is before --from {hour_key(first)}")
    for moment in (first, last):
        if not hourly_partitions.has_partition_key(hour_key(moment)):
            raise ConfigError(f"{hour_key(moment)} is not an hourly partition (they start at "
                              f"{env_name(Calendar, 'partitions_start')} and end with the current hour)")
    return hourly_partitions.get_partition_keys_in_range(
        dg.PartitionKeyRange(hour_key(first), hour_key(last)))


def submit(instance, model: str, keys: list[str], sources: list[str]) -> str:
    """Add the backfill to the instance, for its daemon to launch; its id."""
    import dagster as dg

    from imgpipeline.definitions import defs, settings
    from imgpipeline.defs.automation import yielding_tags
    from imgpipeline.defs.laboratory.assets import SOURCES_TAG, model_data_version
    from imgpipeline.defs.tables import model_key
    from imgpipeline.defs.tables import redetections_key as asset_key
    from imgpipeline.lib.dagster_door import PartitionBackfill
    from imgpipeline.vision import models

    graph = defs.resolve_asset_graph()
    # The model observed first: every run of the backfill records the version of the file it detects with.
    version = model_data_version(models.get(model))
    instance.report_runless_asset_event(dg.AssetObservation(model_key(model),
                                                            tags={"dagster/data_version": version.value}))
    backfill_id = uuid.uuid4().hex[:8]
    # Its runs yield the CPU to the live detection, as the hourly chain's do.
    tags = {**yielding_tags(settings.run_priority), **({SOURCES_TAG: ",".join(sources)} if sources else {})}
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id, asset_graph=graph, partition_names=keys, asset_selection=[asset_key(model)],
        backfill_timestamp=time.time(), tags=tags, dynamic_partitions_store=instance, all_partitions=False,
        title=f"redetect {model} {keys[0]}…{keys[-1]}", description=None, run_config=None)
    instance.add_backfill(backfill)
    return backfill_id


def progress(instance, backfill_id: str) -> tuple[str, dict[str, int]]:
    """The backfill's status and its runs counted by status."""
    import dagster as dg

    backfill = instance.get_backfill(backfill_id)
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    counted: dict[str, int] = {}
    for run in runs:
        counted[run.status.value] = counted.get(run.status.value, 0) + 1
    return backfill.status.value, counted


def daemon_running() -> bool:
    """Whether `imgpipeline dev` runs from this project's state (a daemon elsewhere, on the same
    instance, is not seen)."""
    from imgpipeline.paths import state_dir
    from imgpipeline.services import LocalServices

    return LocalServices(state_dir()).dagster.running()


def redetect(args) -> int:
    from imgpipeline.defs.laboratory.assets import loadable_models
    from imgpipeline.lib.instance import open_instance
    from imgpipeline.paths import state_dir
    from imgpipeline.services.dagster_dev import dagster_home
    from imgpipeline.vision import models

    spec = models.get(args.model)
    _, left_out = loadable_models()
    if spec.name in left_out:
        raise ConfigError(f"{spec.name} has no redetections asset: {left_out[spec.name]}")
    keys = hour_keys(spec.name, parse_hour(args.start, "--from"), parse_hour(args.end, "--to"))
    sources = [s.strip() for s in args.source or [] if s.strip()]
    with open_instance(dagster_home(state_dir())) as instance:
        backfill_id = submit(instance, spec.name, keys, sources)
        print(f"backfill {backfill_id}: {len(keys)} hours ({keys[0]} … {keys[-1]}) of "
              f"redetections/{spec.name}"
              + (f", sources {', '.join(sources)}" if sources else "")
              + "; the daemon launches a run per hour; the UI's Backfills page shows it")
        if not daemon_running():
            print("the daemon is not running here: the backfill waits until `imgpipeline dev` starts it")
        elif spec.name not in models.BUILTIN:
            print(f"(a model added since `imgpipeline dev` started needs its code location reloaded, the "
                  f"UI's Reload, before the daemon knows redetections/{spec.name})")
        if not args.wait:
            return 0
        shown = None
        while True:
            status, counted = progress(instance, backfill_id)
            runs = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counted.items())) or "no run yet"
            line = f"{status.lower()}: {runs}"
            if line != shown:
                print(line, flush=True)
                shown = line
            if status not in ("REQUESTED", "CANCELING", "FAILING"):
                return 0 if status == "COMPLETED_SUCCESS" else 1
            time.sleep(2)
