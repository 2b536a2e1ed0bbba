"""Kafka security for real: a local broker with a SASL_SSL listener (SASL/PLAIN and SCRAM over TLS,
a self-made CA), started by the same launcher as `imgpipeline services up --kafka sasl_ssl`."""

from __future__ import annotations

import json
import uuid

import dagster as dg
import pytest

from imgpipeline import ConfigError
from imgpipeline.cli.samples import sample
from imgpipeline.ingest.messages import FrameMessage, sha256_hex
from imgpipeline.resources import KafkaResource, StorageResource
from imgpipeline.resources.kafka import SASL_MECHANISMS
from imgpipeline.services.kafka_broker import KafkaBroker
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import drain, landing_records, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.instance, pytest.mark.results]


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    broker = KafkaBroker(tmp_path_factory.mktemp("secure-kafka"), secure=True)
    broker.start()
    yield broker
    broker.stop()


def sasl_client(broker: KafkaBroker, monkeypatch, **topics) -> KafkaResource:
    """A client of the SASL_SSL listener as `services.env` configures it; the password as an EnvVar."""
    env = broker.env(broker.ports)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", env["KAFKA_SASL_PASSWORD"])
    return KafkaResource(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], security_protocol="SASL_SSL",
                         sasl_mechanism="SCRAM-SHA-512", sasl_username=env["KAFKA_SASL_USERNAME"],
                         sasl_password=dg.EnvVar("KAFKA_SASL_PASSWORD"), ssl_cafile=env["KAFKA_SSL_CAFILE"],
                         connect_timeout_s=5, **topics)


@pytest.fixture
def secure(secure_broker, monkeypatch) -> KafkaResource:
    return sasl_client(secure_broker, monkeypatch, frames_topic=f"frames-{uuid.uuid4().hex[:8]}")


def test_the_pipeline_runs_over_sasl_ssl(secure, tmp_path):
    """Producer, frames_sensor, detect_frames runs and the DLQ, all over SASL_SSL with SCRAM-SHA-512."""
    secure.ensure_topics(partitions=1)
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    store = storage.open()
    good = sample("zidane.jpg").read_bytes()
    uri = store.put("frames/cam1/2026-11-20/a.jpg", good)
    producer = secure.producer()
    producer.send(secure.frames_topic, key=b"cam1", value=FrameMessage(
        "a", "cam1", "2026-11-20T10:00:00.000Z", uri, sha256_hex(good), None, None).to_json())
    producer.send(secure.frames_topic, key=b"cam1", value=b"{not json")
    producer.flush()
    producer.close()
    with fresh_instance() as instance:
        runs, _ = drain(secure, storage, instance)
    assert runs and all(outcome.success for _, outcome in runs)
    assert sorted(r.status for r in landing_records(storage)) == ["detected", "error"]
    consumer = secure.consumer(group_id=None)
    try:
        from kafka import TopicPartition

        tp = TopicPartition(secure.dlq_topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning()
        (letter,) = [r for rs in consumer.poll(timeout_ms=10_000).values() for r in rs]
        assert "malformed JSON" in json.loads(letter.value)["reason"]
    finally:
        consumer.close()


def test_the_broker_keeps_its_secrets_to_its_owner(secure_broker):
    for name in ("sasl.json", "server.properties"):
        assert (secure_broker.workdir / name).stat().st_mode & 0o077 == 0, name
    assert not (secure_broker.workdir / "tls" / "keystore.pass").exists()


def logs_in(client: KafkaResource) -> bool:
    try:
        client.check()
    except ConfigError as refused:
        assert "refused the SASL login" in str(refused), refused
        return False
    return True


@pytest.fixture
def scram_only(secure) -> dict[str, KafkaResource]:
    """Per SCRAM mechanism, a client of a user the broker holds credentials of for that mechanism alone
    (its password the same as the owner's); returned once the broker describes them so."""
    from kafka.admin import UserScramCredentialUpsertion

    password = dg.EnvVar("KAFKA_SASL_PASSWORD").get_value()
    users = {mechanism: f"only-{mechanism.lower()}" for mechanism in SASL_MECHANISMS if mechanism != "PLAIN"}
    admin = secure.admin()
    try:
        refused = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(user, mechanism, password) for mechanism, user in users.items()])
        assert not any(refused.values()), refused

        def described() -> bool:
            held = admin.describe_user_scram_credentials(list(users.values()))
            return {user: [i["mechanism"].name.replace("_", "-") for i in held[user]["credential_infos"]]
                    for user in users.values()} == {user: [mechanism] for mechanism, user in users.items()}

        wait_for(described, 60, "the SCRAM users")
    finally:
        admin.close()
    return {mechanism: KafkaResource(**{**secure.model_dump(), "sasl_mechanism": mechanism,
                                        "sasl_username": user, "connect_timeout_s": 2})
            for mechanism, user in users.items()}


@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
def test_every_mechanism_logs_in_and_is_the_one_asked_for(secure, scram_only, mechanism):
    """The owner logs in with each mechanism; a user the broker knows for one SCRAM mechanism alone logs
    in with that one and is refused with any other, so the client used the mechanism it was given."""
    assert logs_in(KafkaResource(**{**secure.model_dump(), "sasl_mechanism": mechanism}))
    tried = {holds: logs_in(KafkaResource(**{**client.model_dump(), "sasl_mechanism": mechanism}))
             for holds, client in scram_only.items()}
    assert tried == {holds: holds == mechanism for holds in scram_only}


def test_a_wrong_password_names_the_fix_and_never_the_password(secure, monkeypatch):
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "not-the-password-xyz")
    with pytest.raises(ConfigError, match="refused the SASL login of user 'imgpipeline' with SCRAM-SHA-512; "
                                          "check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD") as failure:
        KafkaResource(**{**secure.model_dump(), "connect_timeout_s": 2}).check()
    assert "not-the-password-xyz" not in str(failure.value)


def test_an_untrusted_ca_names_the_fix(secure, tmp_path):
    other = KafkaBroker(tmp_path / "other", secure=True)
    from imgpipeline.services.kafka_broker import make_tls

    make_tls(other.workdir / "tls", "pw")  # another CA than the broker's
    with pytest.raises(ConfigError, match=r"is not trusted .*not signed by a CA in KAFKA_SSL_CAFILE .*point "
                                          r"KAFKA_SSL_CAFILE at the PEM file"):
        KafkaResource(**{**secure.model_dump(), "ssl_cafile": str(other.ca_file()),
                         "connect_timeout_s": 2}).check()
