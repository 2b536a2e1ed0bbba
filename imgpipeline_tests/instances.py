"""The Dagster instance tests run on: SQLite files (Dagster's default), or the session's PostgreSQL server
for the tests whose proof depends on where the instance keeps its runs (`on_postgres_by_mark`). There
each test has a database of its own (the URL in the environment, for `dagster` processes it starts), and
so does each instance `fresh_instance()` opens, copies of a template with the instance's tables.

`IMGPIPELINE_TEST_INSTANCE` says which tests run on PostgreSQL: `auto` (the default) those of
`on_postgres_by_mark` when its server is installed (in CI it must be), `postgres` every test marked
`instance`, `sqlite` none."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from imgpipeline.lib.instance import InstanceSettings, storage_block, url_env
from imgpipeline.resources.settings import env_name

TEST_INSTANCE_ENV = "IMGPIPELINE_TEST_INSTANCE"
TEMPLATE = "dagster_template"
# The session's PostgreSQL server (conftest's instance_server), when the tests run on it.
SERVER = []


KINDS = ("auto", "postgres", "sqlite")
# The marks of tests whose proof does not depend on where the instance keeps its runs: input at the edges,
# what runs make, and what another test proves on PostgreSQL (pyproject.toml describes each).
NOT_BY_INSTANCE = ("edge", "results", "covered")


def session_instance_kind() -> str:
    kind = os.environ.get(TEST_INSTANCE_ENV, "auto").strip().lower() or "auto"
    if kind not in KINDS:
        raise ValueError(f"{TEST_INSTANCE_ENV}={kind!r}: use one of {', '.join(KINDS)}")
    return kind


def proves_storage(item) -> bool:
    """Whether a test's (a pytest item's) proof depends on where the instance keeps its runs: marked
    `instance` and none of NOT_BY_INSTANCE."""
    return item.get_closest_marker("instance") is not None and not any(
        item.get_closest_marker(mark) for mark in NOT_BY_INSTANCE)


def on_postgres_by_mark(item) -> bool:
    """Whether a test runs on PostgreSQL: by default one that `proves_storage`; with
    IMGPIPELINE_TEST_INSTANCE=postgres every test marked `instance`, with it `sqlite` none."""
    kind = session_instance_kind()
    if kind == "postgres":
        return item.get_closest_marker("instance") is not None
    return kind == "auto" and proves_storage(item)


def on_postgres() -> bool:
    return os.environ.get(env_name(InstanceSettings, "kind")) == "postgres"


def overrides(extra: dict | None = None) -> dict:
    """instance_for_test overrides: the PostgreSQL storage (URL from the environment) when on it."""
    import yaml

    storage = yaml.safe_load(storage_block()) if on_postgres() else {}
    return {**storage, **(extra or {})}


def new_database() -> str:
    """A database of its own on the session's server, a copy of the template; its URL."""
    import uuid

    (server,) = SERVER
    name = f"test_{uuid.uuid4().hex[:12]}"
    server.sql(server.ports, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    return server.url(server.ports, name)


def drop_database(url: str) -> None:
    (server,) = SERVER
    server.sql(server.ports, f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")


# Whether the test under way proves something of where the instance keeps its runs: set for each test
# by conftest's instance_database.
PROVES_STORAGE = [False]


def memory_event_log() -> dict:
    """instance_for_test overrides: the event log in an in-memory SQLite database, the same SQL as the
    files' without a database file made for each run and a commit written to disk for each event."""
    from imgpipeline.lib.dagster_door import NAMES

    module, name = NAMES["InMemoryEventLogStorage"]
    return {"event_log_storage": {"module": module, "class": name}}


@contextmanager
def fresh_instance(extra: dict | None = None) -> Iterator[dg.DagsterInstance]:
    """`dg.instance_for_test`, on the storage this test runs on: on PostgreSQL a database of its own,
    checked to be PostgreSQL's (a silent fall back to SQLite would make that proof nothing); on SQLite
    files, Dagster's default, for a test whose proof depends on the instance's storage; else with its event
    log in memory (`memory_event_log`)."""
    if not on_postgres():
        given = extra if PROVES_STORAGE[0] else {**memory_event_log(), **(extra or {})}
        with dg.instance_for_test(overrides=given) as instance:
            yield instance
        return
    url, saved = new_database(), os.environ.get(url_env())
    os.environ[url_env()] = url
    try:
        with dg.instance_for_test(overrides=overrides(extra)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage", instance.run_storage
            yield instance
    finally:
        if saved is None:
            os.environ.pop(url_env(), None)
        else:
            os.environ[url_env()] = saved
        drop_database(url)


def make_template(url: str) -> None:
    """The instance's tables made once in the template database: each test's database is a copy."""
    import tempfile

    os.environ[url_env()] = url
    try:
        with tempfile.TemporaryDirectory() as home:
            with open(os.path.join(home, "dagster.yaml"), "w") as handle:
                handle.write(storage_block())
            with dg.DagsterInstance.from_config(home) as instance:
                instance.get_runs_count()
    finally:
        os.environ.pop(url_env(), None)  # nothing may write into the template afterwards


def bare_home(path) -> str:
    """A DAGSTER_HOME for a `dagster` command in a subprocess: Dagster's defaults, on the session's
    storage."""
    from pathlib import Path

    home = Path(path)
    home.mkdir(parents=True, exist_ok=True)
    if on_postgres():
        (home / "dagster.yaml").write_text(storage_block())
    return str(home)
