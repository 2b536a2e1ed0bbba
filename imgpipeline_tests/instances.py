"""The Dagster instance tests run on: SQLite files (the default), or the session's PostgreSQL server when
`IMGPIPELINE_TEST_INSTANCE=postgres` (`.ci/run` runs the tests marked `instance` that way too): each
test has a database of its own (the URL in the environment, for `dagster` processes it starts), and so
does each instance `fresh_instance()` opens, copies of a template with the instance's tables."""

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


def session_instance_kind() -> str:
    kind = os.environ.get(TEST_INSTANCE_ENV, "sqlite").strip().lower() or "sqlite"
    if kind not in ("sqlite", "postgres"):
        raise ValueError(f"{TEST_INSTANCE_ENV}={kind!r}: use sqlite or postgres")
    return kind


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


@contextmanager
def fresh_instance(extra: dict | None = None) -> Iterator[dg.DagsterInstance]:
    """`dg.instance_for_test`, on the storage this test session runs on: on PostgreSQL a database of its
    own, checked to be PostgreSQL's (a silent fall back to SQLite would make that pass prove nothing)."""
    if not on_postgres():
        with dg.instance_for_test(overrides=extra) as instance:
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
