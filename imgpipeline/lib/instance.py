"""Where Dagster keeps runs, events, schedules and sensor cursors: SQLite files in DAGSTER_HOME (one
machine), or PostgreSQL (`IMGPIPELINE_INSTANCE=postgres`), which a daemon, a webserver and run workers
on several machines can share; and where it keeps each run's stdout and stderr: in DAGSTER_HOME, or in
the storage root's bucket when that is on S3.

DAGSTER_HOME's `dagster.yaml` is the project's `dagster.yaml` (a link to it) on SQLite with a local
storage root; otherwise it is the same text with a `storage: postgres:` block whose URL Dagster reads
from the environment (`IMGPIPELINE_POSTGRES_URL`), and a `compute_logs:` block naming the bucket, prefix,
endpoint and region (dagster-aws's S3ComputeLogManager, its keys boto3's from the environment). No
password or key is in the file: `dagster_env()` hands them to `dagster dev` and, through it, to the
daemon and every run.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from imgpipeline import ConfigError
from imgpipeline.resources.settings import FromEnv, env_name, one_of, resolved, setting
from imgpipeline.resources.storage import S3ClientResource, StorageResource

KINDS = ("sqlite", "postgres")
MARK = "# Written by imgpipeline"  # what a file of ours says first (a person's own is left alone)
# Under the storage root on S3: each run's stdout and stderr (`<prefix>/compute_logs/storage/<run id>/…`).
COMPUTE_LOGS = "compute_logs"


class InstanceSettings(FromEnv, BaseModel):
    """Which storage the Dagster instance uses."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    kind: str = setting(
        "IMGPIPELINE_INSTANCE", "sqlite",
        "where Dagster keeps runs, events and sensor cursors: `sqlite` (files in DAGSTER_HOME, one "
        "machine) or `postgres` (`IMGPIPELINE_POSTGRES_URL`)")
    postgres_url: object = setting(
        "IMGPIPELINE_POSTGRES_URL", None,
        "the PostgreSQL database of the instance, `postgresql://user:password@host:port/db` (a secret; "
        "`imgpipeline services up --instance postgres` writes one for a local server)", secret=True)

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value):
        return one_of(cls, "kind", str(value).strip().lower(), KINDS)

    @model_validator(mode="after")
    def _url_for_postgres(self):
        url = self.url()
        if self.kind == "postgres" and not url:
            raise ValueError(f"{env_name(type(self), 'kind')}=postgres needs {url_env()}: "
                             "postgresql://user:password@host:port/db "
                             "(`imgpipeline services up --instance postgres` starts a local one)")
        if url:
            # The URL is never repeated: it holds a password.
            expected = ("expected postgresql://user:password@host:port/db, with characters such as @ : / # ? "
                        "in the user or password percent-encoded")
            parts = urlsplit(url)
            try:
                port = parts.port
            except ValueError:
                port = -1
            database = parts.path.strip("/")
            if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not database:
                raise ValueError(f"{url_env()} is not a PostgreSQL URL; {expected}")
            if port == -1 or port == 0:
                raise ValueError(f"{url_env()} has a port that is not a number from 1 to 65535; {expected}")
        return self

    def url(self) -> str | None:
        return resolved(self.postgres_url)

    def shown_url(self) -> str:
        """The database as it may be said: `postgresql://host:port/db`, no login."""
        parts = urlsplit(self.url() or "")
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def url_env() -> str:
    return env_name(InstanceSettings, "postgres_url")


def storage_block() -> str:
    """The instance's `storage:` on PostgreSQL, the URL read from the environment by Dagster."""
    return (f"\n{MARK} for {env_name(InstanceSettings, 'kind')}=postgres: runs, events, schedules and "
            "sensor cursors in PostgreSQL,\n"
            f"# at the URL in ${url_env()} (read by Dagster when the instance loads).\n"
            f"storage:\n  postgres:\n    postgres_url:\n      env: {url_env()}\n")


def compute_logs_config(storage: StorageResource) -> dict | None:
    """The instance's `compute_logs:` for a storage root on S3: each run's stdout and stderr as objects
    under `<root>/compute_logs/`, written by dagster-aws's S3ComputeLogManager at the root's endpoint, so
    they outlive the process or pod that ran it (deploy/dagster.yaml has the same block). None for a
    local root (Dagster keeps them in DAGSTER_HOME). No key: boto3 finds them in the environment of each
    Dagster process."""
    location = storage.location
    if location.scheme != "s3":
        return None
    config = {"bucket": location.bucket, "prefix": "/".join(filter(None, (location.prefix, COMPUTE_LOGS))),
              "endpoint_url": storage.endpoint_url, "region": storage.region,
              # what a running step printed goes up every 30 s too: a worker killed mid-run leaves it
              "upload_interval": 30}
    config = {key: value for key, value in config.items() if value}  # no endpoint: AWS's own
    return {"module": "dagster_aws.s3.compute_log_manager", "class": "S3ComputeLogManager", "config": config}


def compute_logs_block(storage: StorageResource) -> str:
    """`compute_logs_config` as the text of the instance file; empty for a local root."""
    import yaml

    config = compute_logs_config(storage)
    if config is None:
        return ""
    keys = " and ".join(env_name(S3ClientResource, name)
                        for name in ("aws_access_key_id", "aws_secret_access_key"))
    return (f"\n{MARK} for {env_name(StorageResource, 'uri')}={storage.uri}: each run's stdout and stderr\n"
            f"# in the bucket, the keys from {keys} in the environment (never here).\n"
            + yaml.safe_dump({"compute_logs": config}, sort_keys=False))


def write_instance_yaml(home: Path, project_yaml: Path | None, settings: InstanceSettings,
                        storage: StorageResource | None = None) -> Path:
    """DAGSTER_HOME/dagster.yaml for the chosen instance storage and storage root (`storage`; None: a local
    one): a link to the project's file on SQLite with a local root, else the project's file plus the
    PostgreSQL storage block and the S3 compute logs block as they apply. A file of another kind is
    replaced; a person's own file (neither a link nor written here) is left alone."""
    target = home / "dagster.yaml"
    ours = target.is_symlink() or (target.exists() and MARK in target.read_text())
    if target.exists() and not ours:
        if settings.kind == "postgres" and "postgres" not in str(_storage_of(target)):
            raise ConfigError(
                f"{env_name(InstanceSettings, 'kind')}=postgres, but {target} is a file of your own whose "
                "storage is not PostgreSQL: give it a `storage: postgres:` block (its URL from the "
                f"environment: `postgres_url: {{env: {url_env()}}}`), or remove it and it is written for you")
        return target
    added = (storage_block() if settings.kind == "postgres" else "") + (
        compute_logs_block(storage) if storage is not None else "")
    if not added:
        linked = target.is_symlink() and target.resolve() == (project_yaml and project_yaml.resolve())
        if project_yaml is not None and not linked:
            target.unlink(missing_ok=True)
            target.symlink_to(project_yaml)
        return target
    text = (project_yaml.read_text() if project_yaml is not None else "") + added
    if target.is_symlink() or not target.exists() or target.read_text() != text:
        target.unlink(missing_ok=True)
        target.write_text(text)
    return target


def _storage_of(path: Path):
    import yaml

    try:
        return (yaml.safe_load(path.read_text()) or {}).get("storage")
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def instance_env(settings: InstanceSettings | None = None,
                 storage: StorageResource | None = None) -> dict[str, str]:
    """What a Dagster process needs in its environment to open the instance and use it: the PostgreSQL
    URL, and for run logs in S3 the region and the keys (when set; else boto3's chain)."""
    settings = settings or InstanceSettings.from_env()
    storage = storage or StorageResource.from_env()
    env = {url_env(): settings.url()} if settings.kind == "postgres" else {}
    if compute_logs_config(storage) is not None:
        s3 = storage.s3
        for name in ("region_name", "aws_access_key_id", "aws_secret_access_key"):
            value = resolved(getattr(s3, name))
            if value:
                env[env_name(S3ClientResource, name)] = value
    return env


def open_instance(home: Path):
    """The instance of DAGSTER_HOME `home` in this process (the URL exported first when it comes from an
    env file)."""
    import dagster as dg

    from imgpipeline.lib.dagster_door import read_migrations_once

    read_migrations_once()
    os.environ.update(instance_env())
    return dg.DagsterInstance.from_config(str(home))
