"""Settings from the environment, and where the project keeps its local state.

Everything a person configures comes from environment variables (DESIGN.md lists them).
`imgpipeline services up` writes the addresses of the local services to
`.imgpipeline/services.env`; a `.env` in the project root may hold a person's own settings.
Both are read here without overriding variables that are already set, so the shell wins,
then `.env`, then the local services.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse


class ConfigError(Exception):
    """A setting is wrong or a configured service cannot be used; the message says what to fix."""


PACKAGE_DIR = Path(__file__).resolve().parent

KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def project_home() -> Path:
    """The folder that holds `.imgpipeline/`: $IMGPIPELINE_HOME, else the working directory."""
    return Path(os.environ.get("IMGPIPELINE_HOME") or os.getcwd()).resolve()


def state_dir() -> Path:
    """`.imgpipeline/` under the project home: services, local data, Dagster storage."""
    return project_home() / ".imgpipeline"


def models_dir() -> Path:
    """Where the model cfg, names and weights live: $IMGPIPELINE_MODELS_DIR, else `models/`.

    `models/` of the source checkout when the package is installed from one (editable
    install), else `models/` under the project home.
    """
    configured = os.environ.get("IMGPIPELINE_MODELS_DIR")
    if configured:
        return Path(configured).resolve()
    checkout = PACKAGE_DIR.parent / "models"
    if (checkout / "yolov4-tiny.cfg").exists():
        return checkout
    return project_home() / "models"


def services_env_file() -> Path:
    return state_dir() / "services.env"


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; blank lines and `#` comments are ignored."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def load_env_files() -> None:
    """Put `.env` and `.imgpipeline/services.env` into os.environ without overriding."""
    for path in (project_home() / ".env", services_env_file()):
        for key, value in read_env_file(path).items():
            os.environ.setdefault(key, value)


def env_secret(name: str):
    """A `dg.EnvVar` for a secret that is set, else None (the client's own defaults apply).

    Resources hold the EnvVar, not the value, so the secret never shows in run config,
    the UI or logs.
    """
    import dagster as dg

    return dg.EnvVar(name) if os.environ.get(name) else None


def resolved(value):
    """The value of a possibly unresolved `dg.EnvVar` (outside a Dagster run, e.g. the CLI)."""
    get_value = getattr(value, "get_value", None)
    return get_value() if callable(get_value) else value


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


def _number(name: str, default: float, minimum: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw} must be at least {minimum:g}")
    return value


@dataclass(frozen=True)
class Settings:
    """The non-secret settings, read from the environment and checked at load.

    Secrets (S3 keys, the SASL password) are not held here: resources take them as
    `dg.EnvVar`s so they never appear in run config, logs or metadata.
    """

    storage_uri: str
    aws_endpoint_url: str | None
    aws_region: str
    kafka_bootstrap_servers: str
    kafka_security_protocol: str
    kafka_sasl_mechanism: str | None
    kafka_sasl_username: str | None
    kafka_ssl_cafile: str | None
    frames_topic: str
    max_batch: int = 500
    max_wait_s: float = 0.0
    sensor_interval_s: int = 5
    sensor_watch_s: float = 3.5
    max_runs_in_flight: int = 2
    detector_threads: int = 0
    detector_workers: int = 0

    @classmethod
    def from_env(cls) -> Settings:
        load_env_files()
        settings = cls(
            storage_uri=_env("IMGPIPELINE_STORAGE_URI", (state_dir() / "data").as_uri()),
            aws_endpoint_url=_env("AWS_ENDPOINT_URL"),
            aws_region=_env("AWS_REGION", _env("AWS_DEFAULT_REGION", "us-east-1")),
            kafka_bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            kafka_security_protocol=_env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper(),
            kafka_sasl_mechanism=(_env("KAFKA_SASL_MECHANISM") or "").upper() or None,
            kafka_sasl_username=_env("KAFKA_SASL_USERNAME"),
            kafka_ssl_cafile=_env("KAFKA_SSL_CAFILE"),
            frames_topic=_env("IMGPIPELINE_FRAMES_TOPIC", "frames"),
            max_batch=int(_number("IMGPIPELINE_MAX_BATCH", 500, minimum=1)),
            max_wait_s=_number("IMGPIPELINE_MAX_WAIT_S", 0.0, minimum=0),
            sensor_interval_s=int(_number("IMGPIPELINE_SENSOR_INTERVAL_S", 5, minimum=1)),
            sensor_watch_s=_number("IMGPIPELINE_SENSOR_WATCH_S", 3.5, minimum=0),
            max_runs_in_flight=int(_number("IMGPIPELINE_MAX_RUNS_IN_FLIGHT", 2, minimum=1)),
            detector_threads=int(_number("IMGPIPELINE_DETECTOR_THREADS", 0, minimum=0)),
            detector_workers=int(_number("IMGPIPELINE_DETECTOR_WORKERS", 0, minimum=0)),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        parse_storage_uri(self.storage_uri)
        if self.kafka_security_protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ConfigError(
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol!r} is not known; "
                f"use one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}"
            )
        if self.kafka_security_protocol.startswith("SASL_"):
            if self.kafka_sasl_mechanism not in KAFKA_SASL_MECHANISMS:
                raise ConfigError(
                    f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                    f"KAFKA_SASL_MECHANISM set to one of {', '.join(KAFKA_SASL_MECHANISMS)}"
                )
            if not self.kafka_sasl_username or not os.environ.get("KAFKA_SASL_PASSWORD"):
                raise ConfigError(
                    f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                    "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD in the environment"
                )
        if self.kafka_ssl_cafile and not Path(self.kafka_ssl_cafile).is_file():
            raise ConfigError(
                f"KAFKA_SSL_CAFILE={self.kafka_ssl_cafile} is not a file; point it at the "
                "PEM file of the CA that signed the brokers' certificates"
            )
        # A tick still watching when the daemon's 5 s loop comes round makes the next one wait.
        longest_watch = max(self.sensor_interval_s, 5) - 1
        if self.sensor_watch_s > longest_watch:
            raise ConfigError(
                f"IMGPIPELINE_SENSOR_WATCH_S={self.sensor_watch_s:g} is too long for ticks "
                f"{self.sensor_interval_s} s apart (the daemon's loop is 5 s); use at most "
                f"{longest_watch} or 0 to turn watching off"
            )
        if not self.frames_topic or any(c in self.frames_topic for c in " /\\"):
            raise ConfigError(
                f"IMGPIPELINE_FRAMES_TOPIC={self.frames_topic!r} is not a valid Kafka topic name"
            )


@dataclass(frozen=True)
class StorageLocation:
    """A parsed storage root: `file` with a folder, or `s3` with a bucket and key prefix."""

    scheme: str
    bucket: str | None
    prefix: str
    folder: Path | None


def parse_storage_uri(uri: str) -> StorageLocation:
    """Parse `file:///abs/folder`, a plain folder path, or `s3://bucket/prefix`."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                f"IMGPIPELINE_STORAGE_URI={uri!r}: a file URI needs three slashes, "
                "e.g. file:///var/lib/imgpipeline"
            )
        if not path:
            raise ConfigError("IMGPIPELINE_STORAGE_URI is empty; use file:///path or s3://bucket/prefix")
        return StorageLocation("file", None, "", Path(path).expanduser().resolve())
    if parsed.scheme == "s3":
        bucket = parsed.netloc
        if not _valid_bucket_name(bucket):
            raise ConfigError(
                f"IMGPIPELINE_STORAGE_URI={uri!r}: {bucket!r} is not a valid S3 bucket name "
                "(3-63 lowercase letters, digits, dots and hyphens)"
            )
        return StorageLocation("s3", bucket, parsed.path.strip("/"), None)
    raise ConfigError(
        f"IMGPIPELINE_STORAGE_URI={uri!r}: unknown scheme {parsed.scheme!r}; "
        "use file:///path/to/folder or s3://bucket/prefix"
    )


def _valid_bucket_name(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return (
        3 <= len(name) <= 63
        and set(name) <= allowed
        and name[0].isalnum()
        and name[-1].isalnum()
        and ".." not in name
    )
