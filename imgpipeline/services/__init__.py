"""The local services behind `imgpipeline services up|down|status` and the test fixtures."""

from __future__ import annotations

from pathlib import Path

from imgpipeline.services.base import LocalService, ServiceError
from imgpipeline.services.dagster_dev import DagsterDev, dagster_home
from imgpipeline.services.kafka_broker import KafkaBroker
from imgpipeline.services.mosquitto import INSTALL_HINT, Mosquitto, mosquitto_path
from imgpipeline.services.postgres import Postgres
from imgpipeline.services.s3_endpoint import BUCKET, S3Endpoint
from imgpipeline.services.viewer import ViewerService

__all__ = ["DagsterDev", "KafkaBroker", "LocalService", "LocalServices", "Postgres", "S3Endpoint",
           "ServiceError"]


class LocalServices:
    """The broker, the S3 endpoint and (on request) `dagster dev` and the viewer, under one state folder.

    state is the project's `.imgpipeline/`: services live in `services/`, Dagster's
    instance in `dagster/`. `host`: the address the broker, the S3 endpoint and PostgreSQL listen on and
    their clients are given (None: where they last started, else 127.0.0.1).
    """

    def __init__(self, state: Path, secure_kafka: bool = False, host: str | None = None):
        self.state = Path(state)
        root = self.state / "services"
        self.kafka = KafkaBroker(root / "kafka", secure=secure_kafka, host=host)
        self.s3 = S3Endpoint(root / "s3", host)
        self.dagster = DagsterDev(root / "dagster", self.state / "dagster", self.state.parent)
        self.viewer = ViewerService(root / "viewer", self.state.parent)
        self.mqtt = Mosquitto(root / "mqtt")
        self.postgres = Postgres(root / "postgres", host)

    @property
    def all(self) -> list[LocalService]:
        return [self.kafka, self.s3, self.mqtt, self.postgres, self.dagster, self.viewer]

    def up(self, log=print, instance: str = "sqlite") -> list[dict]:
        """Start the broker, the S3 endpoint, Mosquitto when it is installed and, for
        `instance="postgres"`, the instance's PostgreSQL server (not the UI: see up_ui)."""
        statuses = []
        wanted = [self.kafka, self.s3, self.mqtt] + ([self.postgres] if instance == "postgres" else [])
        for service in wanted:
            if service is self.mqtt and mosquitto_path() is None:
                log(f"no MQTT broker: mosquitto is not installed ({INSTALL_HINT})")
                continue
            log(f"starting {service.name} …")
            statuses.append(service.start())
        return statuses

    def up_ui(self) -> dict:
        """`dagster dev` in the background: UI, daemon, sensors, runs."""
        return self._up_dagster(headless=False)

    def up_daemon(self) -> dict:
        """The daemon alone in the background (sensors, schedules, runs; no UI): the benchmarks' and the
        fault tests' pipeline, without a webserver's CPU beside it."""
        return self._up_dagster(headless=True)

    def _up_dagster(self, headless: bool) -> dict:
        dagster_home(self.state)
        if self.dagster.running() and bool(self.dagster.ports) == headless:
            self.dagster.stop()  # running the other way
        self.dagster.headless = headless
        return self.dagster.start()

    def up_viewer(self) -> dict:
        """`imgpipeline serve` in the background, over the storage services.env points at."""
        return self.viewer.start()

    def down(self) -> dict[str, bool]:
        """Every service stopped, those that use the others first: `dagster dev` stopped after the broker
        would wait out a sensor's Kafka call (30 s) before it could end."""
        stopped = {service.name: service.stop() for service in reversed(self.all)}
        return {service.name: stopped[service.name] for service in self.all}

    def status(self) -> list[dict]:
        """Kafka and S3 always; the MQTT broker, the UI and the viewer when they run."""
        return [s.status() for s in self.all if s in (self.kafka, self.s3) or s.running()]

    def env_file_text(self, storage: str = "local") -> str:
        """The services.env that `dagster dev` and the CLI read; S3 lines active on request."""
        kafka = self.kafka.env(self.kafka.ports) if self.kafka.running() else {}
        kafka.update(self.mqtt.env(self.mqtt.ports) if self.mqtt.running() else {})
        kafka.update(self.postgres.env(self.postgres.ports) if self.postgres.running() else {})
        s3 = self.s3.env(self.s3.ports) if self.s3.running() else {}
        lines = ["# Written by `imgpipeline services up`; variables set in the shell win."]
        lines += [f"{key}={value}" for key, value in kafka.items()]
        if s3:
            active = storage == "s3"
            prefix = "" if active else "# "
            lines.append(
                "# Local S3 endpoint (in memory)."
                + ("" if active else " Uncomment to keep data there instead of the local folder:")
            )
            from imgpipeline.resources.settings import env_name
            from imgpipeline.resources.storage import StorageResource

            lines.append(f"{prefix}{env_name(StorageResource, 'uri')}=s3://{BUCKET}/data")
            lines += [f"{prefix}{key}={value}" for key, value in s3.items()]
        return "\n".join(lines) + "\n"
