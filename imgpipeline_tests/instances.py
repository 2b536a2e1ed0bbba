"""The Dagster instance tests run on: SQLite files (the default), or the session's PostgreSQL server with
a fresh database per test when `IMGPIPELINE_TEST_INSTANCE=postgres` (`.ci/run` runs the tests marked
`instance` that way too)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from imgpipeline.lib.instance import InstanceSettings, storage_block, url_env
from imgpipeline.resources.settings import env_name

TEST_INSTANCE_ENV = "IMGPIPELINE_TEST_INSTANCE"
TEMPLATE = "dagster_template"


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


@contextmanager
def fresh_instance(extra: dict | None = None) -> Iterator[dg.DagsterInstance]:
    """`dg.instance_for_test`, on the storage this test session runs on."""
    with dg.instance_for_test(overrides=overrides(extra) or None) as instance:
        yield instance


def make_template(url: str) -> None:
    """The instance's tables made once in the template database: each test's database is a copy."""
    import tempfile

    os.environ[url_env()] = url
    with tempfile.TemporaryDirectory() as home:
        with open(os.path.join(home, "dagster.yaml"), "w") as handle:
            handle.write(storage_block())
        with dg.DagsterInstance.from_config(home) as instance:
            instance.get_runs_count()


def bare_home(path) -> str:
    """A DAGSTER_HOME for a `dagster` command in a subprocess: Dagster's defaults, on the session's
    storage."""
    from pathlib import Path

    home = Path(path)
    home.mkdir(parents=True, exist_ok=True)
    if on_postgres():
        (home / "dagster.yaml").write_text(storage_block())
    return str(home)
