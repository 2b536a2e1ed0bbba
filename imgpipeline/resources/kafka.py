"""Kafka connection: one place that turns settings into kafka-python clients."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
from pydantic import field_validator, model_validator

from imgpipeline import ConfigError
from imgpipeline.resources.settings import FromEnv, env_name, one_of, resolved, setting

CONSUMER_GROUP = "imgpipeline-detect"


def followers_group(topic: str) -> str:
    """The consumer group whose members are the fast lane's follow_frames runs of `topic`."""
    return f"{CONSUMER_GROUP}.follow.{topic}"


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MESSAGE_BYTES = 1_048_588  # Kafka's default max.message.bytes
LINGER_MS = 5
# A client whose broker went away tries again at least once a second, not after up to 30 s (the client
# library's default): a run that was reading when the broker restarted goes on as soon as the broker is
# back (6 s sooner in a test where it restarted in 14 s).
RECONNECT_BACKOFF_MAX_MS = 1000
DELIVERY_MARGIN_S = 10.0


class KafkaResource(FromEnv, dg.ConfigurableResource):
    """A Kafka cluster: bootstrap servers, security (PLAINTEXT, SSL, SASL PLAIN/SCRAM) and topics.

    The SASL password comes from the environment as a `dg.EnvVar`.
    """

    bootstrap_servers: str = setting("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "comma-separated brokers")
    security_protocol: str = setting("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", ", ".join(SECURITY_PROTOCOLS))
    sasl_mechanism: str | None = setting("KAFKA_SASL_MECHANISM", None, ", ".join(SASL_MECHANISMS))
    sasl_username: str | None = setting("KAFKA_SASL_USERNAME", None, "SASL user name")
    sasl_password: str | None = setting("KAFKA_SASL_PASSWORD", None, "SASL password (a secret)", secret=True)
    ssl_cafile: str | None = setting("KAFKA_SSL_CAFILE", None, "PEM file of the brokers' CA",
                                     shown="system CAs")
    frames_topic: str = setting("IMGPIPELINE_FRAMES_TOPIC", "frames",
                                "the frames topic; the DLQ is `<topic>.dlq`")
    frames_partitions: int = setting(
        "IMGPIPELINE_FRAMES_PARTITIONS", 2,
        "partitions of the frames topic, the unit of parallel detection: made with this many, and a topic "
        "with fewer grown to it when the topics are checked (`imgpipeline services up`, the MQTT bridge); "
        "a source's frames then move to another partition once", ge=1, le=1000)
    alerts_topic: str = setting("IMGPIPELINE_ALERTS_TOPIC", "alerts",
                                "where alerts are published, keyed by alert number; webhook deliveries "
                                "that fail are dead-lettered to `<topic>.dlq`")
    request_timeout_ms: int = setting(
        "KAFKA_REQUEST_TIMEOUT_MS", 30_000,
        "how long a client waits for the broker's answer to one request before it tries again", ge=1000,
        le=300_000)
    delivery_timeout_ms: int = setting(
        "KAFKA_DELIVERY_TIMEOUT_MS", 120_000,
        "a frame a producer or the MQTT bridge sent is acknowledged by Kafka or counted as failed within "
        "this (retries included): the longest a producer waits for a broker that is away", ge=1000)
    max_block_ms: int = setting(
        "KAFKA_MAX_BLOCK_MS", 60_000,
        "how long sending one frame may wait for the topic's metadata or for room in the send buffer; "
        "then that frame fails", ge=0)
    connect_timeout_s: float = 10.0

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value):
        return value.strip().upper() or None if isinstance(value, str) else value

    @field_validator("security_protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        return one_of(cls, "security_protocol", value, SECURITY_PROTOCOLS)

    @field_validator("frames_topic", "alerts_topic")
    @classmethod
    def _topic_name(cls, value: str, info) -> str:
        if not re.match(r"^[A-Za-z0-9._-]{1,200}\Z", value or ""):
            raise ValueError(f"{env_name(cls, info.field_name)}={value!r} is not a valid Kafka topic name")
        return value

    @field_validator("ssl_cafile")
    @classmethod
    def _cafile_exists(cls, value: str | None) -> str | None:
        if value and not Path(value).is_file():
            raise ValueError(f"KAFKA_SSL_CAFILE={value} is not a file; point it at the PEM file of the "
                             "CA that signed the brokers' certificates")
        return value

    @model_validator(mode="after")
    def _sasl_complete(self):
        protocol = self.security_protocol
        if protocol.startswith("SASL_"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_MECHANISM set to "
                                 f"one of {', '.join(SASL_MECHANISMS)}")
            if not self.sasl_username or not self.sasl_password:
                raise ValueError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                                 "KAFKA_SASL_PASSWORD in the environment")
        return self

    @model_validator(mode="after")
    def _delivery_outlasts_a_request(self):
        least = self.request_timeout_ms + LINGER_MS
        if self.delivery_timeout_ms < least:
            delivery = env_name(type(self), "delivery_timeout_ms")
            request = env_name(type(self), "request_timeout_ms")
            raise ValueError(f"{delivery}={self.delivery_timeout_ms} is shorter than one request ({request}="
                             f"{self.request_timeout_ms} + {LINGER_MS} ms of linger): set it to {least} or "
                             "more")
        return self

    @property
    def delivery_bound_s(self) -> float:
        """The longest a producer's flush may wait: the delivery timeout, and a margin for the client's own
        bookkeeping. Past it, what Kafka has not answered counts as failed (a client that lost track of a
        batch must not hold a producer forever)."""
        return self.delivery_timeout_ms / 1000 + DELIVERY_MARGIN_S

    @property
    def dlq_topic(self) -> str:
        return f"{self.frames_topic}.dlq"

    @property
    def dead_letter_topics(self) -> list[str]:
        return [self.dlq_topic, f"{self.alerts_topic}.dlq"]

    def keep_dead_letters(self, days: int) -> dict[str, str]:
        """Have the broker delete dead letters older than `days` (0: keep them for ever): the topics stay
        compacted (a letter per origin), and with `delete` their segments older than retention.ms go.
        Topics not created yet are passed over (ensure_topics makes them; the next call sets them)."""
        from kafka.admin import ConfigResource, ConfigResourceType

        configs = ({"cleanup.policy": "compact,delete", "retention.ms": str(days * 86_400_000)} if days
                   else {"cleanup.policy": "compact", "retention.ms": "-1"})
        admin = self.admin()
        try:
            present = [t for t in self.dead_letter_topics if t in set(admin.list_topics())]
            if present:
                answers = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t, configs=configs)
                                               for t in present]).get("topic", {})
                if refused := {t: answer for t, answer in answers.items() if answer != "OK"}:
                    raise ConfigError(f"the broker refused the dead letters' retention: {refused}")
        finally:
            admin.close()
        return {topic: configs["retention.ms"] for topic in present}

    def client_config(self) -> dict:
        """Connection settings shared by producers, consumers and the admin client."""
        config: dict = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
            "bootstrap_timeout_ms": int(self.connect_timeout_s * 1000),
            "request_timeout_ms": self.request_timeout_ms,
            "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        }
        if self.security_protocol.startswith("SASL_"):
            config.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=resolved(self.sasl_password),
            )
        if self.ssl_cafile:
            config["ssl_cafile"] = self.ssl_cafile
        return config

    def _unreachable(self, exc: Exception) -> ConfigError:
        return ConfigError(f"cannot reach Kafka at {self.bootstrap_servers}: {self.diagnose(exc)}")

    def diagnose(self, exc: Exception) -> str:
        """Why the first broker cannot be used, found by a probe of our own (kafka-python only says it
        could not bootstrap): unreachable, an untrusted certificate, or a refused SASL login. Never
        shows a secret."""
        import socket
        import ssl

        host, _, port = self.bootstrap_servers.split(",")[0].strip().rpartition(":")
        try:
            raw = socket.create_connection((host, int(port)), timeout=self.connect_timeout_s)
        except (OSError, ValueError) as error:
            return (f"{host}:{port} does not answer ({error}); start the local broker with "
                    "`imgpipeline services up`, or set KAFKA_BOOTSTRAP_SERVERS for your cluster")
        with raw:
            if self.security_protocol in ("SSL", "SASL_SSL"):
                context = ssl.create_default_context(cafile=self.ssl_cafile)
                try:
                    context.wrap_socket(raw, server_hostname=host).close()
                except ssl.SSLCertVerificationError as error:
                    trusted = (f"KAFKA_SSL_CAFILE ({self.ssl_cafile})" if self.ssl_cafile
                               else "the system CAs")
                    return (f"the certificate of {host}:{port} is not trusted ({error.verify_message}): "
                            f"it is not signed by a CA in {trusted}; point KAFKA_SSL_CAFILE at the PEM file "
                            "of the CA that signed the brokers' certificates")
                except (ssl.SSLError, OSError) as error:
                    return (f"no TLS handshake with {host}:{port} ({error}); is it the broker's TLS "
                            "listener, and KAFKA_SECURITY_PROTOCOL right?")
            if self.security_protocol.startswith("SASL_"):
                return (f"{host}:{port} answers but refused the SASL login of user {self.sasl_username!r} "
                        f"with {self.sasl_mechanism}; check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD "
                        "(and that the broker enables that mechanism)")
        return f"{host}:{port} answers but the Kafka client failed: {type(exc).__name__}: {exc}"

    def producer(self, **overrides):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        # Not idempotent: kafka-python 3.0.12's idempotent sender, once a batch expires, drops its producer id
        # and never asks for another, so every later send and flush waits forever (a producer whose broker
        # was frozen past the delivery timeout hung). Retries may then write a frame twice, which the
        # pipeline keeps once (it dedupes on the frame).
        config = {"acks": "all", "linger_ms": LINGER_MS, "enable_idempotence": False,
                  "delivery_timeout_ms": self.delivery_timeout_ms, "max_block_ms": self.max_block_ms,
                  **self.client_config(), **overrides}
        try:
            return KafkaProducer(**config)
        except KafkaError as exc:
            raise self._unreachable(exc) from None

    def preload(self) -> None:
        """Import the client ahead of runs forked from this process (~150 modules, 0.3 s)."""
        import kafka.admin  # noqa: F401
        from kafka import KafkaConsumer, KafkaProducer  # noqa: F401

    def consumer(self, **overrides):
        """A consumer without a subscription, for assign + seek over exact ranges."""
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        config = {
            "group_id": CONSUMER_GROUP,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            **self.client_config(),
            **overrides,
        }
        try:
            return KafkaConsumer(**config)
        except KafkaError as exc:
            raise self._unreachable(exc) from None

    def admin(self):
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            return KafkaAdminClient(**self.client_config())
        except KafkaError as exc:
            raise self._unreachable(exc) from None

    def check(self) -> None:
        """Raise ConfigError unless the cluster answers a metadata request (`kafka_acls.check`: and grants
        every operation the pipeline does)."""
        admin = self.admin()
        try:
            admin.list_topics()
        finally:
            admin.close()

    def tool_options(self) -> str:
        """What Kafka's own tools (kafka-topics.sh, kafka-acls.sh) need besides the servers to log in as
        this client: nothing over PLAINTEXT, else a properties file of its security settings."""
        return "" if self.security_protocol == "PLAINTEXT" else " --command-config client.properties"


    def ensure_topics(self, partitions: int | None = None, log=None) -> None:
        """Create the frames and alerts topics and their dead-letter topics when they are missing, with
        the cluster's own replication factor (`default.replication.factor`); a frames topic with fewer
        partitions than asked (`frames_partitions`) is grown, never shrunk. A cluster that refuses to
        create them is a ConfigError with the commands an operator runs to create them instead."""
        from kafka import errors
        from kafka.admin import NewPartitions

        partitions = partitions or self.frames_partitions
        admin = self.admin()
        try:
            existing = set(admin.list_topics())
            if self.frames_topic in existing:
                (described,) = admin.describe_topics([self.frames_topic])
                have = len(described.get("partitions") or [])
                if 0 < have < partitions:
                    admin.create_partitions({self.frames_topic: NewPartitions(total_count=partitions)})
                    if log is not None:
                        log(f"topic {self.frames_topic}: {have} → {partitions} partitions; sources' new "
                            "frames may go to another partition from now on")
            wanted = {name: spec for name, spec in self.topic_specs(partitions).items()
                      if name not in existing}
            if wanted:
                try:
                    created = admin.create_topics(wanted, raise_errors=False)["topics"]
                except errors.IncompatibleBrokerVersion as exc:  # before Kafka 2.4: no cluster default
                    raise self._refused(wanted, str(exc)) from None
                failed = {t["name"]: (errors.for_code(t["error_code"]), t["error_message"]) for t in created
                          if t["error_code"] not in (0, errors.TopicAlreadyExistsError.errno)}
                if any(error.retriable for error, _ in failed.values()):  # a timeout: it may yet be made
                    raise ConfigError(f"Kafka at {self.bootstrap_servers} did not create the topics "
                                      f"{', '.join(failed)} in time ({self._reasons(failed)}); try again")
                if failed:
                    raise self._refused({name: wanted[name] for name in failed}, self._reasons(failed))
        finally:
            admin.close()

    def topic_specs(self, partitions: int) -> dict[str, dict]:
        """The topics the pipeline writes, as Kafka's CreateTopics takes them (replication -1: the
        cluster's default)."""
        # The broker's append time dates a frame's arrival whatever the producer's clock says: it is the
        # frame's ingested_at, and its wait under overload.
        specs = {self.frames_topic: {"num_partitions": partitions, "replication_factor": -1,
                                     "configs": {"message.timestamp.type": "LogAppendTime"}}}
        # The DLQs and alerts are compacted: letters are keyed by origin and alerts by number, so a retried
        # run's second letter (or alert) replaces the first. They take messages up to Kafka's default limit
        # even on a cluster set lower: a dead letter is bounded below it.
        for name in (self.alerts_topic, *self.dead_letter_topics):
            specs[name] = {"num_partitions": 1, "replication_factor": -1,
                           "configs": {"cleanup.policy": "compact", "max.message.bytes": str(MESSAGE_BYTES)}}
        return specs

    @staticmethod
    def _reasons(failed: dict) -> str:
        return "; ".join(f"{name}: {message or error.__name__}" for name, (error, message) in failed.items())

    def _refused(self, wanted: dict[str, dict], why: str) -> ConfigError:
        config = self.tool_options()
        commands = "\n".join(
            f"  kafka-topics.sh --bootstrap-server {self.bootstrap_servers}{config} --create --topic {name} "
            f"--partitions {spec['num_partitions']} --replication-factor \"$REPLICAS\" "
            + " ".join(f"--config {key}={value}" for key, value in spec["configs"].items())
            for name, spec in wanted.items())
        login = ("; client.properties: this client's security settings as Kafka's tools read them "
                 "(security.protocol, sasl.mechanism, sasl.jaas.config, ssl.truststore.location)")
        login = login if config else ""
        return ConfigError(
            f"Kafka at {self.bootstrap_servers} refused to create the topics {', '.join(wanted)} (with the "
            f"cluster's default replication factor): {why}. Create them yourself with the replicas your "
            f"cluster keeps, then start again{login}:\n  REPLICAS=3\n" + commands)
