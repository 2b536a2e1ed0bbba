"""The line the suite draws between its instances holds (imgpipeline_tests/instances.py): a test whose proof
depends on where the instance keeps its runs is on PostgreSQL wherever its server is installed, and one
whose proof does not keeps its runs in SQLite files and its event log in memory. Were the line lost, every
test would pass on SQLite and the PostgreSQL proofs would be made by none."""

import os

import pytest

from imgpipeline.lib.dagster_door import NAMES
from imgpipeline.services.postgres import postgres_bin
from imgpipeline_tests.conftest import CI_ENV, require_tool
from imgpipeline_tests.instances import fresh_instance, on_postgres, session_instance_kind


@pytest.mark.instance
def test_a_test_that_proves_the_instances_storage_is_on_postgresql():
    if session_instance_kind() == "sqlite":
        pytest.skip("IMGPIPELINE_TEST_INSTANCE=sqlite puts no test on PostgreSQL")
    installed = postgres_bin("initdb") is not None
    require_tool(None if installed or os.environ.get(CI_ENV) else "postgresql is not installed")
    assert on_postgres()
    with fresh_instance() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"


@pytest.mark.instance
@pytest.mark.results
def test_a_test_that_proves_what_runs_make_keeps_its_events_in_memory():
    if session_instance_kind() == "postgres":
        pytest.skip("IMGPIPELINE_TEST_INSTANCE=postgres puts every test marked instance on PostgreSQL")
    assert not on_postgres()
    with fresh_instance() as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert type(instance.event_log_storage).__name__ == NAMES["InMemoryEventLogStorage"][1]
