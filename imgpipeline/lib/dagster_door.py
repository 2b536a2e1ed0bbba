"""The one door to Dagster's private modules (`dagster._…`): every name the project takes from them.

Dagster's public API does not reach everything a code location that forks its own runs and watches its
own daemon needs: the run launcher's worker health, the arguments of a run's execution, the run-retry
daemon's cursor, a sensor's saved state, a backfill's record, the SQLite event log's own files. Each such
name is listed here with where it lives, and nothing else in the package imports `dagster._` (the
architecture test holds that), so an upgrade of Dagster that moves one is found here, by the contract
test of this module (`imgpipeline_tests/test_lib/test_dagster_door.py`), not in a failed run.

A name is imported when first used (`from imgpipeline.lib.dagster_door import WorkerStatus`): a process
that needs none of them does not pay for the modules that hold them.
"""

from __future__ import annotations

import importlib
import threading

# name → (its module, its name there)
NAMES: dict[str, tuple[str, str]] = {
    # the run launcher and its fork server (lib/launcher.py, lib/fork_server.py)
    "CheckRunHealthResult": ("dagster._core.launcher", "CheckRunHealthResult"),
    "WorkerStatus": ("dagster._core.launcher", "WorkerStatus"),
    "ExecuteRunArgs": ("dagster._grpc.types", "ExecuteRunArgs"),
    "InstanceRef": ("dagster._core.instance", "InstanceRef"),
    "dagster_cli_main": ("dagster._cli", "main"),
    "serialize_value": ("dagster._serdes", "serialize_value"),
    "deserialize_value": ("dagster._serdes", "deserialize_value"),
    "GrpcServerCodeLocationOrigin": ("dagster._core.remote_origin", "GrpcServerCodeLocationOrigin"),
    # run retries (lib/retries.py, services/dagster_dev.py)
    "AUTO_RETRY_RUN_ID_TAG": ("dagster._core.storage.tags", "AUTO_RETRY_RUN_ID_TAG"),
    "WILL_RETRY_TAG": ("dagster._core.storage.tags", "WILL_RETRY_TAG"),
    "retry_cursor_key_of": ("dagster._daemon.auto_run_reexecution.event_log_consumer", "_create_cursor_key"),
    # sensors' saved state and ticks (defs/streaming/reconcile.py, benchmarks)
    "InstigatorType": ("dagster._core.scheduler.instigation", "InstigatorType"),
    "TickStatus": ("dagster._core.scheduler.instigation", "TickStatus"),
    # a backfill submitted to the instance (cli/redetect.py)
    "PartitionBackfill": ("dagster._core.execution.backfill", "PartitionBackfill"),
    # the event log kept in memory, for tests whose proof does not depend on the instance's storage
    # (imgpipeline_tests/instances.py)
    "InMemoryEventLogStorage": ("dagster._core.storage.event_log", "InMemoryEventLogStorage"),
    # the SQLite event log's files (defs/streaming/upkeep.py) and run tables (bench soak's history)
    "SqliteEventLogStorage": ("dagster._core.storage.event_log.sqlite.sqlite_event_log",
                              "SqliteEventLogStorage"),
    "RunsTable": ("dagster._core.storage.runs.schema", "RunsTable"),
    "RunTagsTable": ("dagster._core.storage.runs.schema", "RunTagsTable"),
}
# The module `dagster dev` runs its daemon from (`python -m …`; services/headless.py runs it alone).
DAEMON_MODULE = "dagster._daemon"
# The backfill daemon's loop reads this name of `dagster._daemon.controller` as it starts (Dagster's 30 s:
# lib/run_queue.py sets it).
BACKFILL_INTERVAL_NAME = "DEFAULT_DAEMON_INTERVAL_SECONDS"


def __getattr__(name: str):
    if name not in NAMES:
        raise AttributeError(f"{__name__} has no {name!r}: add it to NAMES")
    module, attribute = NAMES[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once found, a plain attribute
    return value


def retry_cursor_key() -> str:
    """The key under which the run-retry daemon keeps its place in the run-failure events."""
    import dagster as dg

    return __getattr__("retry_cursor_key_of")(dg.DagsterEventType.RUN_FAILURE)


def set_backfill_interval(seconds: int) -> None:
    """The seconds the backfill daemon waits between its passes, in this process: set before the daemon's
    threads start (its loop reads it once). Dagster has no setting for it; the same name also paces the
    automation daemon when automation is not evaluated by sensors, which it is here."""
    controller = importlib.import_module("dagster._daemon.controller")
    if not hasattr(controller, BACKFILL_INTERVAL_NAME):
        raise AttributeError(f"dagster._daemon.controller has no {BACKFILL_INTERVAL_NAME}: "
                             "see lib/run_queue.py")
    setattr(controller, BACKFILL_INTERVAL_NAME, seconds)


def preload_cli() -> None:
    """Import what a run imports before its code location (Dagster's CLI), in a process that forks runs."""
    importlib.import_module("dagster._cli")


def read_migrations_once() -> None:
    """Each time Dagster opens a SQL storage (an instance, a run's event log) it checks the tables' revision
    against Alembic's migration scripts, which Alembic reads and executes afresh (~90 files, 0.1 s a
    time). The scripts do not change while a process runs: from here on this process reads them once and
    keeps them. A forked run inherits them read."""
    from alembic.script import ScriptDirectory

    if getattr(ScriptDirectory.from_config, "read_once", False):
        return
    read = ScriptDirectory.from_config.__func__
    kept: dict[tuple, ScriptDirectory] = {}
    lock = threading.Lock()

    def from_config(cls, config, *args, **kwargs):
        key = (cls, config.get_main_option("script_location"), config.get_main_option("version_locations"),
               args, tuple(sorted(kwargs.items())))
        with lock:
            if key not in kept:
                kept[key] = read(cls, config, *args, **kwargs)
            return kept[key]

    from_config.read_once = True
    ScriptDirectory.from_config = classmethod(from_config)
