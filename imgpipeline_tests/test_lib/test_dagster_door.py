"""The door to Dagster's private modules holds against the installed Dagster: every name it lists is
found, and each does what the project uses it for."""

import inspect
from pathlib import Path

import dagster as dg
import pytest

from imgpipeline.environment import cores
from imgpipeline.lib import dagster_door
from imgpipeline_tests.instances import fresh_instance, memory_event_log


def parameters(record) -> set[str]:
    return set(inspect.signature(record).parameters)


def test_every_name_of_the_door_is_found_in_this_dagster():
    missing = []
    for name in dagster_door.NAMES:
        try:
            getattr(dagster_door, name)
        except (ImportError, AttributeError) as error:
            missing.append(f"{name}: {error}")
    assert missing == []


def test_each_name_does_what_the_project_uses_it_for():
    door = dagster_door
    # The launcher's health answers and the run's execution arguments, through Dagster's serdes.
    assert {door.WorkerStatus.RUNNING, door.WorkerStatus.FAILED, door.WorkerStatus.SUCCESS,
            door.WorkerStatus.NOT_FOUND, door.WorkerStatus.UNKNOWN} <= set(door.WorkerStatus)
    assert door.CheckRunHealthResult(door.WorkerStatus.FAILED, "gone").msg == "gone"
    with fresh_instance() as instance:
        ref = instance.get_ref()
        assert door.deserialize_value(door.serialize_value(ref), door.InstanceRef) == ref
        # A run's execution is asked for with these arguments (the launcher's tests launch real runs).
        assert {"job_origin", "run_id", "instance_ref"} <= parameters(door.ExecuteRunArgs)
        # The run-retry daemon's cursor key, and the tags run retries set.
        assert door.retry_cursor_key() == door.retry_cursor_key_of(dg.DagsterEventType.RUN_FAILURE)
        assert "RUN_FAILURE" in door.retry_cursor_key() or "PIPELINE_FAILURE" in door.retry_cursor_key()
        assert door.AUTO_RETRY_RUN_ID_TAG.startswith("dagster/")
        assert door.WILL_RETRY_TAG.startswith("dagster/")
        # Sensors' saved state is asked for by instigator type (none yet on a fresh instance).
        assert list(instance.all_instigator_state(instigator_type=door.InstigatorType.SENSOR)) == []
        assert door.TickStatus.SUCCESS in set(door.TickStatus)
        assert {"run_id", "status"} <= {c.name for c in door.RunsTable.columns}
        assert {"run_id", "key", "value"} <= {c.name for c in door.RunTagsTable.columns}
    # The SQLite event log, whose files the purge deletes, is Dagster's own class on a default instance;
    # the tests that prove nothing of the instance's storage keep theirs in memory.
    with dg.instance_for_test() as instance:
        assert isinstance(instance.event_log_storage, door.SqliteEventLogStorage)
    with dg.instance_for_test(overrides=memory_event_log()) as instance:
        assert isinstance(instance.event_log_storage, door.InMemoryEventLogStorage)
    assert callable(door.dagster_cli_main)
    assert {"backfill_id", "status", "asset_selection"} <= parameters(door.PartitionBackfill)
    door.preload_cli()


class Waits:
    """A shutdown event that is never set and keeps what it was asked to wait."""

    def __init__(self):
        self.asked: list[float] = []

    def wait(self, seconds: float) -> bool:
        self.asked.append(seconds)
        return False

    def is_set(self) -> bool:
        return False


def project_instance_home(folder, **config) -> int:
    """The project's dagster.yaml in `folder`, its run coordinator's config updated with `config`; the
    backfill interval it sets."""
    import yaml

    from imgpipeline.paths import PACKAGE_DIR

    instance = yaml.safe_load((PACKAGE_DIR.parent / "dagster.yaml").read_text())
    instance["run_coordinator"]["config"].update(config)
    (folder / "dagster.yaml").write_text(yaml.safe_dump(instance))
    return instance["run_coordinator"]["config"]["backfill_interval_seconds"]


def test_the_instance_of_dagster_yaml_sets_the_pace_the_backfill_daemon_waits(tmp_path, monkeypatch):
    """The daemon's daemons built from the project's dagster.yaml, as `dagster-daemon run` builds them,
    set the interval its backfill loop then waits between passes (Dagster's 30 s, which the yaml lowers)."""
    import importlib
    import logging
    from types import SimpleNamespace

    from dagster._daemon.backfill import execute_backfill_iteration_loop
    from dagster._daemon.controller import create_daemons_from_instance

    controller = importlib.import_module("dagster._daemon.controller")
    monkeypatch.setattr(controller, dagster_door.BACKFILL_INTERVAL_NAME, 30)  # put back after the test
    wanted = project_instance_home(tmp_path)
    assert 0 < wanted < 30
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        daemons = create_daemons_from_instance(instance)
        assert "BACKFILL" in {d.daemon_type() for d in daemons}
        assert getattr(controller, dagster_door.BACKFILL_INTERVAL_NAME) == wanted
        # the yaml's run queue limits hold as they did with Dagster's own class; runs at once, which it
        # leaves unset, are the machine's cores
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == max(2, cores())
        assert [limit["limit"] for limit in queue.tag_concurrency_limits] == [2]
        waits = Waits()
        loop = execute_backfill_iteration_loop(SimpleNamespace(instance=instance), logging.getLogger(), waits)
        while not waits.asked:  # one pass (no backfill to make), then its wait
            next(loop)
    assert 0 < waits.asked[0] <= wanted


def test_runs_at_once_follow_the_cores_the_daemon_may_use_unless_dagster_yaml_sets_them(tmp_path,
                                                                                    monkeypatch):
    """Six CPUs to run on: six runs at once and frames_sensor's twelve in flight; one CPU: two and four
    (the fast lane's run holds a slot for good); a yaml that sets its runs at once keeps them, and
    IMGPIPELINE_TOTAL_RUNS_IN_FLIGHT set is what it says."""
    import yaml

    from imgpipeline.defs.streaming.batch_policy import BatchPolicy
    from imgpipeline.lib import run_queue

    monkeypatch.setattr(run_queue, "cores", lambda: 6)  # the machine's own quota plays no part here
    project_instance_home(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 6
    assert BatchPolicy.from_env().total_runs_in_flight == 12
    monkeypatch.setattr(run_queue, "cores", lambda: 1)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
    assert BatchPolicy.from_env().total_runs_in_flight == 4
    monkeypatch.setenv("IMGPIPELINE_TOTAL_RUNS_IN_FLIGHT", "5")
    assert BatchPolicy.from_env().total_runs_in_flight == 5
    instance = yaml.safe_load((tmp_path / "dagster.yaml").read_text())
    instance["concurrency"]["runs"]["max_concurrent_runs"] = 3
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 3


def test_a_backfill_interval_below_a_second_fails_at_load_saying_what_to_set(tmp_path):
    project_instance_home(tmp_path, backfill_interval_seconds=0)
    said = "backfill_interval_seconds in dagster.yaml is 0: set it to 1 or more"
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance, pytest.raises(ValueError, match=said):
        instance.run_coordinator  # noqa: B018 (built when first asked for, as the daemon asks)


def test_migration_scripts_read_once_give_the_head_read_afresh_and_still_migrate(tmp_path):
    """Read once a process (the tests' processes read them so from the start): the same scripts for the
    same place, the same head as a fresh read, and a storage stamped a revision back migrated to it."""
    import sqlite3

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    dagster_door.read_migrations_once()
    dagster_door.read_migrations_once()  # a second call changes nothing
    place = Path(dg.__file__).parent / "_core" / "storage" / "alembic"  # Dagster's migrations
    first, second = Config(), Config()
    for each in (first, second):
        each.set_main_option("script_location", str(place))
    kept = ScriptDirectory.from_config(first)
    assert ScriptDirectory.from_config(second) is kept
    head = kept.as_revision_number("head")
    assert head == ScriptDirectory(str(place)).as_revision_number("head")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.get_runs()
    [runs_db] = tmp_path.rglob("runs.db")
    with sqlite3.connect(runs_db) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (head,)
        db.execute("UPDATE alembic_version SET version_num = ?", (kept.get_revision(head).down_revision,))
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.upgrade()
    with sqlite3.connect(runs_db) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (head,)
