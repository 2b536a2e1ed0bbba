"""A single-node Apache Kafka broker in KRaft mode, from Maven Central jars.

The jars are resolved once per machine with Maven into the cache; with KAFKA_HOME set,
that install's `libs/` is used instead.
"""

from __future__ import annotations

import base64
import fcntl
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from imgpipeline.environment import cache_dir, environment
from imgpipeline.services.base import LOOPBACK, LocalService, ServiceError

BROKER_VERSION = "4.3.1"
LOG4J_VERSION = "2.24.3"
# This module's settings, for `imgpipeline settings` and docs/configuration.md: variable, default, meaning.
SETTINGS = [("KAFKA_HOME", "jars from Maven Central", "an Apache Kafka 4.x install for the local broker")]


def install_hint() -> str:
    from imgpipeline.resources.kafka import KafkaResource
    from imgpipeline.resources.settings import env_name

    return ("The local Kafka broker needs Java 17+ and Maven (to fetch the broker jars once), "
            "or KAFKA_HOME pointing at an Apache Kafka 4.x install: install openjdk-17 and maven, "
            f"or set {env_name(KafkaResource, 'bootstrap_servers')} to a broker you already run.")


POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>imgpipeline.local</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{BROKER_VERSION}</version></dependency>
    <!-- the broker POM lacks an SLF4J binding -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"""

LOG4J2 = """status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
"""


def java_major_version() -> int | None:
    java = shutil.which("java")
    if not java:
        return None
    result = subprocess.run([java, "-version"], capture_output=True, text=True)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def kafka_classpath() -> str:
    """The broker's classpath: $KAFKA_HOME/libs, else the cached Maven jars (resolved once)."""
    kafka_home = environment().get("KAFKA_HOME")
    if kafka_home:
        libs = Path(kafka_home) / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise ServiceError(f"KAFKA_HOME={kafka_home} has no libs/kafka_2.13-*.jar; " + install_hint())
        return f"{libs}/*"
    version = java_major_version()
    if version is None or version < 17:
        found = "no java on PATH" if version is None else f"java {version} found"
        raise ServiceError(f"{install_hint()} ({found})")
    folder = cache_dir() / f"kafka-{BROKER_VERSION}"
    libs, done = folder / "libs", folder / "libs.complete"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        # Two first starts at once (a test session beside `services up`) resolve once: the second
        # waits for the first instead of emptying the folder under it.
        with open(folder / "resolve.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.exists():
                resolve_jars(folder, libs)
                done.write_text(BROKER_VERSION)
    return f"{libs}/*"


def resolve_jars(folder: Path, libs: Path) -> None:
    """The broker's runtime jars from Maven Central into `libs`."""
    mvn = shutil.which("mvn")
    if not mvn:
        raise ServiceError(f"{install_hint()} (no mvn on PATH)")
    (folder / "pom.xml").write_text(POM)
    shutil.rmtree(libs, ignore_errors=True)
    print(f"resolving Apache Kafka {BROKER_VERSION} jars from Maven Central into {libs} (once)")
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(folder / "pom.xml"),
         "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={libs}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ServiceError(
            "Maven could not fetch the Kafka broker jars:\n"
            + (result.stdout + result.stderr)[-2000:]
        )


def make_tls(folder: Path, password: str) -> Path:
    """A self-made CA and a broker certificate for 127.0.0.1 (openssl), as a PKCS12 keystore; the CA's
    PEM is what clients trust (their CA file setting). Made once per broker folder."""
    folder.mkdir(parents=True, exist_ok=True)
    keystore = folder / "broker.p12"
    if keystore.exists():
        return keystore
    openssl = shutil.which("openssl")
    if not openssl:
        raise ServiceError("the SASL_SSL listener needs openssl to make its certificates: install openssl")

    def run(*args: str) -> None:
        result = subprocess.run([openssl, *args], cwd=folder, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServiceError(f"openssl {args[0]} failed: {result.stderr[-1000:]}")

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=imgpipeline local CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "broker.key",
        "-out", "broker.csr")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "3650", "-extfile", "san.ext", "-out", "broker.pem")
    secret = folder / "keystore.pass"  # by file, not on a command line anyone can read
    secret.touch(mode=0o600)
    secret.write_text(password + "\n")
    run("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
        "-name", "broker", "-out", "broker.p12", "-passout", "file:keystore.pass")
    secret.unlink()
    return keystore


def new_cluster_id() -> str:
    """A KRaft cluster id as Kafka makes them: URL-safe base64 of a UUID, never starting with '-'
    (the storage tool would read such an id as an option, as Kafka's own Uuid.randomUuid avoids)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SASL_USER = "imgpipeline"


class KafkaBroker(LocalService):
    """Kafka broker + controller in one JVM on its host address (127.0.0.1 unless asked), the controller on
    127.0.0.1; data under its workdir.

    With `secure`, a SASL_SSL listener too (SASL/PLAIN and SCRAM-SHA-256/512 over TLS with a self-made
    CA), for clients configured as against a real cluster; the PLAINTEXT listener stays for the
    broker's own readiness probe.
    """

    name = "kafka"
    port_names = ("port", "controller_port")
    start_timeout_s = 90.0

    def __init__(self, workdir: Path, secure: bool = False, host: str | None = None):
        super().__init__(workdir, host)
        self.secure = secure
        if secure:
            self.port_names = (*KafkaBroker.port_names, "secure_port")

    def credentials(self) -> dict[str, str]:
        """The SASL user's password and the keystore's, made once (a file only its owner reads)."""
        path = self.workdir / "sasl.json"
        if not path.exists():
            import secrets

            self.workdir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(json.dumps({"user": SASL_USER, "password": secrets.token_urlsafe(18),
                                        "keystore_password": secrets.token_urlsafe(18)}))
        return json.loads(path.read_text())

    def ca_file(self) -> Path:
        return self.workdir / "tls" / "ca.pem"

    def listener_properties(self, ports: dict[str, int]) -> list[str]:
        plain = f"PLAINTEXT://{self.host}:{ports['port']}"
        controller = f"CONTROLLER://127.0.0.1:{ports['controller_port']}"
        if not self.secure:
            return [f"listeners={plain},{controller}", f"advertised.listeners={plain}",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"]
        creds = self.credentials()
        secure = f"SASL_SSL://127.0.0.1:{ports['secure_port']}"
        jaas = "listener.name.sasl_ssl.{}.sasl.jaas.config=org.apache.kafka.common.security.{}"
        return [
            f"listeners={plain},{controller},{secure}", f"advertised.listeners={plain},{secure}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            f"sasl.enabled.mechanisms={','.join(SASL_MECHANISMS)}",
            jaas.format("plain", "plain.PlainLoginModule required ")
            + f'user_{creds["user"]}="{creds["password"]}";',
            jaas.format("scram-sha-256", "scram.ScramLoginModule required;"),
            jaas.format("scram-sha-512", "scram.ScramLoginModule required;"),
            "ssl.keystore.type=PKCS12", f"ssl.keystore.location={self.workdir / 'tls' / 'broker.p12'}",
            f"ssl.keystore.password={creds['keystore_password']}",
            f"ssl.key.password={creds['keystore_password']}",
        ]

    def start(self) -> dict:
        if self.secure and self.host != LOOPBACK:
            raise ServiceError("the SASL_SSL listener's certificate names 127.0.0.1 only: start the broker "
                               f"with it on 127.0.0.1 (`--host 127.0.0.1`), not {self.host}")
        if self.running() and set(self.ports) != set(self.port_names):
            self.stop()  # started with or without the SASL_SSL listener: the other way now
        return super().start()

    def server_properties(self, ports: dict[str, int]) -> str:
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{ports['controller_port']}",
            *self.listener_properties(ports),
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={self.workdir / 'data'}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "share.coordinator.state.topic.num.partitions=1",
            "group.initial.rebalance.delay.ms=0",
            "log.cleaner.dedupe.buffer.size=16777216",
            "auto.create.topics.enable=false",
            "",
        ])

    def _java(self, classpath: str) -> list[str]:
        # A broker for one machine's frames: the quick compiler only and the serial collector start it in
        # half the CPU time and half the wait of the JVM's server defaults (C2, G1), and it idles cheaper.
        return [
            shutil.which("java") or "java", "-Xms64m", "-Xmx512m", "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            "-cp", classpath,
        ]

    def prepare(self, ports: dict[str, int]) -> None:
        classpath = kafka_classpath()
        if self.secure:
            make_tls(self.workdir / "tls", self.credentials()["keystore_password"])
        properties = self.workdir / "server.properties"
        previous = properties.read_text() if properties.exists() else None
        current = self.server_properties(ports)
        data = self.workdir / "data"
        if previous != current:
            # The quorum's voter set remembers the controller address: new ports, new data.
            shutil.rmtree(data, ignore_errors=True)
        properties.write_text(current)
        properties.chmod(0o600)  # with the SASL_SSL listener it holds passwords
        (self.workdir / "log4j2.properties").write_text(LOG4J2)
        if (data / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        result = subprocess.run(
            [*self._java(classpath), "kafka.tools.StorageTool", "format", "--standalone",
             "-t", cluster_id, "-c", str(properties), *self.scram_users()],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise ServiceError("formatting the Kafka storage failed:\n" + result.stderr[-2000:])

    def scram_users(self) -> list[str]:
        """The SCRAM credentials the storage tool writes into the new cluster's metadata."""
        if not self.secure:
            return []
        creds = self.credentials()
        user = f"name={creds['user']},password={creds['password']}"
        return [arg for mechanism in SASL_MECHANISMS if mechanism.startswith("SCRAM")
                for arg in ("--add-scram", f"{mechanism}=[{user}]")]

    def argv(self, ports: dict[str, int]) -> list[str]:
        return [*self._java(kafka_classpath()), "kafka.Kafka", str(self.workdir / "server.properties")]

    def address(self, ports: dict[str, int]) -> str:
        return f"{self.host}:{ports['port']}"

    def env(self, ports: dict[str, int]) -> dict[str, str]:
        """Client settings: the PLAINTEXT listener, or with `secure` the SASL_SSL one (SCRAM-SHA-512)."""
        from imgpipeline.resources.kafka import KafkaResource
        from imgpipeline.resources.settings import env_name

        if not self.secure:
            return {env_name(KafkaResource, "bootstrap_servers"): self.address(ports)}
        creds = self.credentials()
        values = {"bootstrap_servers": f"127.0.0.1:{ports['secure_port']}", "security_protocol": "SASL_SSL",
                  "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": creds["user"],
                  "sasl_password": creds["password"], "ssl_cafile": str(self.ca_file())}
        return {env_name(KafkaResource, field): value for field, value in values.items()}

    def ready(self, ports: dict[str, int]) -> bool:
        """Ready when an admin client can create the project's topics."""
        from kafka.errors import KafkaError

        from imgpipeline import ConfigError
        from imgpipeline.resources.kafka import KafkaResource

        if not ports:
            return False
        resource = KafkaResource(
            bootstrap_servers=self.address(ports),
            frames_topic=KafkaResource.env_value("frames_topic"),
            connect_timeout_s=2.0,
        )
        try:
            resource.ensure_topics()
            return True
        except (ConfigError, KafkaError, OSError):
            return False
