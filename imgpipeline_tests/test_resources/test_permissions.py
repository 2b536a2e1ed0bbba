"""`imgpipeline check` names each permission the pipeline lacks: on a broker that enforces ACLs (Kafka's
own authorizer, the SASL user granted what a test says) and on an S3 endpoint that enforces IAM policies
(the user's keys allowed what a test says); granted everything it asks for, the pipeline runs."""

from __future__ import annotations

import json
import uuid

import pytest

from imgpipeline import ConfigError
from imgpipeline.cli.samples import sample
from imgpipeline.ingest.messages import FrameMessage, sha256_hex
from imgpipeline.resources import KafkaResource, StorageResource, kafka_acls
from imgpipeline.resources.kafka import CONSUMER_GROUP, followers_group
from imgpipeline.services.kafka_broker import KafkaBroker
from imgpipeline.services.s3_endpoint import BUCKET, LOCAL_KEY_ID, LOCAL_SECRET, REGION, S3Endpoint
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.pipeline import drain, landing_records, wait_for
from imgpipeline_tests.test_resources.test_kafka_security import sasl_client

pytestmark = [pytest.mark.integration]


class AuthorizingBroker(KafkaBroker):
    """The local broker with its SASL_SSL listener and Kafka's authorizer: the SASL user may do only what
    an ACL allows; the PLAINTEXT listener (the tests' admin, and the broker's own) is a super user."""

    def server_properties(self, ports: dict[str, int]) -> str:
        return super().server_properties(ports) + (
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n"
            "super.users=User:ANONYMOUS\n")


@pytest.fixture(scope="module")
def authorizing_broker(tmp_path_factory):
    broker = AuthorizingBroker(tmp_path_factory.mktemp("acl-kafka"), secure=True)
    broker.start()
    yield broker
    broker.stop()


def pair(broker: KafkaBroker, monkeypatch) -> tuple[KafkaResource, KafkaResource]:
    """The SASL user's client and the super user's, on topics of their own, not made yet."""
    tag = uuid.uuid4().hex[:8]
    topics = {"frames_topic": f"frames-{tag}", "alerts_topic": f"alerts-{tag}", "frames_partitions": 1}
    user = sasl_client(broker, monkeypatch, **topics)
    return user, KafkaResource(bootstrap_servers=broker.address(broker.ports), connect_timeout_s=5, **topics)


@pytest.fixture
def clients(authorizing_broker, monkeypatch) -> tuple[KafkaResource, KafkaResource]:
    """The pair, their topics made by the super user."""
    user, admin = pair(authorizing_broker, monkeypatch)
    admin.ensure_topics()
    return user, admin


def grant(admin: KafkaResource, user: KafkaResource, leave_out: set[tuple[str, str]] = frozenset(),
          more: tuple[tuple[str, str, str], ...] = ()) -> None:
    """ACLs for what `kafka_acls.permissions(user)` lists, but the (name, operation) pairs left out, and
    for the (kind, name, operation) of `more`."""
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    acls = [ACL(kafka_acls.principal(user), "*", ACLOperation[operation], ACLPermissionType.ALLOW,
                ResourcePattern(ResourceType[kind.upper()], name, ACLResourcePatternType.LITERAL))
            for (kind, name), operations in kafka_acls.permissions(user).items() for operation in operations
            if (name, operation) not in leave_out]
    acls += [ACL(kafka_acls.principal(user), "*", ACLOperation[operation], ACLPermissionType.ALLOW,
                 ResourcePattern(ResourceType[kind.upper()], name, ACLResourcePatternType.LITERAL))
             for kind, name, operation in more]
    client = admin.admin()
    try:
        assert client.create_acls(acls)["failed"] == []
    finally:
        client.close()


def test_a_missing_acl_is_named_with_the_command_that_grants_it_and_granted_all_the_pipeline_runs(
        clients, tmp_path):
    user, admin = clients
    with pytest.raises(ConfigError) as refused:
        kafka_acls.check(user)  # nothing granted yet: every operation is named, and the group's
    said = str(refused.value)
    for (kind, name), operations in kafka_acls.permissions(user).items():
        for operation in operations:
            assert f"{operation} on {kind} {name}:" in said
    assert kafka_acls.principal(user) == "User:imgpipeline" and "password" not in said.lower()

    followers = followers_group(user.frames_topic)
    grant(admin, user, leave_out={(user.dlq_topic, "WRITE"), (CONSUMER_GROUP, "READ"), (followers, "READ")})
    # The authorizer applies new ACLs within moments: asked until only what was left out is missing. The
    # broker says nothing of a topic a client may not describe (WRITE would let it): the dead-letter
    # topic's ALTER_CONFIGS, granted, is named too.
    expected = [("topic", user.dlq_topic, "WRITE"), ("topic", user.dlq_topic, "ALTER_CONFIGS"),
                ("group", CONSUMER_GROUP, "READ"), ("group", followers, "READ")]
    wait_for(lambda: [m[:3] for m in missing(user)] == expected, 30, "the ACLs to apply",
             explain=lambda: str(missing(user)))
    with pytest.raises(ConfigError) as refused:
        kafka_acls.check(user)
    said = str(refused.value)
    assert f"WRITE on topic {user.dlq_topic}: runs and the MQTT bridge dead-letter" in said
    assert (f"--add --allow-principal User:imgpipeline --operation Write --topic {user.dlq_topic}" in said
            and f"--operation Read --group {CONSUMER_GROUP}" in said
            and f"--operation Read --group {followers}" in said)
    assert f"on topic {user.frames_topic}:" not in said

    grant(admin, user)
    wait_for(lambda: missing(user) == [], 30, "every ACL to apply", explain=lambda: str(missing(user)))
    kafka_acls.check(user)
    runs_with_only_what_it_asked_for(user, tmp_path)


def test_topics_still_to_be_made_need_create_which_the_check_asks_without_making_them(authorizing_broker,
                                                                                        monkeypatch):
    """Granted all but CREATE, the check names CREATE on each topic still to be made and makes none;
    granted CREATE on the cluster, nothing is missing and the user makes the topics."""
    user, admin = pair(authorizing_broker, monkeypatch)
    grant(admin, user)
    topics = [name for kind, name in kafka_acls.permissions(user) if kind == "topic"]
    wait_for(lambda: sorted(m[:3] for m in missing(user)) == sorted(("topic", t, "CREATE") for t in topics),
             30, "the ACLs to apply", explain=lambda: str(missing(user)))
    assert not set(topics) & set(admin.admin().list_topics())  # asked, not made
    granted = {(name, op) for (_, name), ops in kafka_acls.permissions(user).items() for op in ops}
    grant(admin, user, leave_out=granted, more=(("cluster", "kafka-cluster", "CREATE"),))
    wait_for(lambda: missing(user) == [], 30, "CREATE to apply", explain=lambda: str(missing(user)))
    user.ensure_topics()
    assert set(topics) <= set(admin.admin().list_topics())


def test_imgpipeline_check_names_the_missing_acl_and_the_missing_s3_permission_at_once(
        authorizing_broker, enforcing_s3, s3_users, monkeypatch, tmp_path):
    """The done-when of `imgpipeline check`: one pass names what the broker and the bucket each lack."""
    from imgpipeline.cli.local import run_checks

    user, admin = pair(authorizing_broker, monkeypatch)
    admin.ensure_topics()
    grant(admin, user, leave_out={(user.alerts_topic, "WRITE")})
    wait_for(lambda: [m[:3] for m in missing(user)] == [("topic", user.alerts_topic, "WRITE")], 30,
             "the ACLs to apply", explain=lambda: str(missing(user)))
    prefix, keys, endpoint_url = s3_users
    env = authorizing_broker.env(authorizing_broker.ports)
    settings = {"IMGPIPELINE_FRAMES_TOPIC": user.frames_topic, "IMGPIPELINE_FRAMES_PARTITIONS": "1",
                "IMGPIPELINE_ALERTS_TOPIC": user.alerts_topic,
                "IMGPIPELINE_STORAGE_URI": f"s3://{BUCKET}/{prefix}",
                "AWS_ENDPOINT_URL": endpoint_url, "AWS_ACCESS_KEY_ID": keys["no-delete"]["access_key_id"],
                "AWS_SECRET_ACCESS_KEY": keys["no-delete"]["secret_access_key"]}
    for name, value in {**env, **settings}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        run_checks(log=lambda line: None)
    said = str(refused.value)
    assert f"WRITE on topic {user.alerts_topic}: alerts are published" in said
    assert "s3:DeleteObject: retention, compaction and released claims delete objects" in said
    assert env["KAFKA_SASL_PASSWORD"] not in said and keys["no-delete"]["secret_access_key"] not in said


def missing(user: KafkaResource) -> list:
    client = user.admin()
    try:
        return kafka_acls.missing(user, client)
    finally:
        client.close()


def runs_with_only_what_it_asked_for(user: KafkaResource, tmp_path) -> None:
    """A frame and a corrupt message detected and dead-lettered by frames_sensor's runs, the offsets
    committed, an alert published and the dead letters' retention set: all with the ACLs check asked for."""
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    good = sample("zidane.jpg").read_bytes()
    uri = storage.open().put("frames/cam1/2026-11-20/a.jpg", good)
    producer = user.producer()
    producer.send(user.frames_topic, key=b"cam1", value=FrameMessage(
        "a", "cam1", "2026-11-20T10:00:00.000Z", uri, sha256_hex(good), None, None).to_json())
    producer.send(user.frames_topic, key=b"cam1", value=b"{not json")
    producer.send(user.alerts_topic, key=b"1", value=json.dumps({"number": 1}).encode())
    producer.flush()
    producer.close()
    with fresh_instance() as instance:
        runs, _ = drain(user, storage, instance)
    assert runs and all(outcome.success for _, outcome in runs)
    assert sorted(r.status for r in landing_records(storage)) == ["detected", "error"]
    assert user.keep_dead_letters(7) == {topic: str(7 * 86_400_000) for topic in user.dead_letter_topics}


class EnforcingS3Endpoint(S3Endpoint):
    """The local S3 endpoint enforcing IAM: its first requests (the bucket made, the tests' users and
    policies) go unchecked, every later one is checked against the policies of the keys that sign it."""

    unchecked = 40  # more than the requests until the users are made; the rest are spent by `enforce`


@pytest.fixture(scope="module")
def enforcing_s3(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", str(EnforcingS3Endpoint.unchecked))
        endpoint = EnforcingS3Endpoint(tmp_path_factory.mktemp("iam-s3"))
        endpoint.start()
    yield endpoint
    endpoint.stop()


ACTIONS = ("s3:ListBucket", "s3:PutObject", "s3:GetObject", "s3:DeleteObject")


def users(endpoint: S3Endpoint, prefix: str) -> dict[str, dict]:
    """Keys of a user allowed every action the pipeline uses under `prefix`, of one without
    s3:DeleteObject and of one without s3:ListBucket; then the endpoint's unchecked requests spent, so
    that it checks every later one."""
    import boto3
    from botocore.exceptions import ClientError

    root = {"endpoint_url": endpoint.address(endpoint.ports), "region_name": REGION,
            "aws_access_key_id": LOCAL_KEY_ID, "aws_secret_access_key": LOCAL_SECRET}
    iam, s3 = boto3.client("iam", **root), boto3.client("s3", **root)
    made = {}
    for name, actions in {"full": ACTIONS, "no-delete": ACTIONS[:3], "no-list": ACTIONS[1:]}.items():
        iam.create_user(UserName=name)
        statements = [{"Effect": "Allow", "Action": [a for a in actions if a != "s3:ListBucket"],
                       "Resource": f"arn:aws:s3:::{BUCKET}/{prefix}/*"}]
        if "s3:ListBucket" in actions:
            statements.append({"Effect": "Allow", "Action": ["s3:ListBucket"],
                               "Resource": f"arn:aws:s3:::{BUCKET}"})
        iam.put_user_policy(UserName=name, PolicyName="imgpipeline", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": statements}))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        made[name] = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
    for _ in range(EnforcingS3Endpoint.unchecked):
        try:
            s3.list_buckets()
        except ClientError:  # the root's key is no IAM user's: refused once requests are checked
            return made
    raise AssertionError("the S3 endpoint does not enforce IAM policies")


@pytest.fixture(scope="module")
def s3_users(enforcing_s3) -> tuple[str, dict[str, dict], str]:
    """The users of `users` on a prefix of their own, made once (then every request is checked): the
    prefix, their keys and the endpoint."""
    prefix = uuid.uuid4().hex[:8]
    return prefix, users(enforcing_s3, prefix), enforcing_s3.address(enforcing_s3.ports)


def test_a_missing_s3_permission_is_named_and_the_keys_allowed_all_pass(s3_users):
    prefix, keys, endpoint_url = s3_users

    def storage(user: str) -> StorageResource:
        return StorageResource(uri=f"s3://{BUCKET}/{prefix}", endpoint_url=endpoint_url, **keys[user])

    def refused(user: str, uri: str = f"s3://{BUCKET}/{prefix}") -> tuple[list[str], str]:
        """The actions the check names as refused to the user's keys, and all it said."""
        with pytest.raises(ConfigError) as refusal:
            StorageResource(uri=uri, endpoint_url=endpoint_url, **keys[user]).open().check()
        said = str(refusal.value)
        listed = said.split("\nAllow them")[0].splitlines()[1:]
        return [line.split(":", 2)[0].strip() + ":" + line.split(":", 2)[1] for line in listed], said

    named, said = refused("no-delete")
    assert named == ["s3:DeleteObject"]
    assert "s3:DeleteObject: retention, compaction and released claims delete objects" in said
    assert f"arn:aws:s3:::{BUCKET}/{prefix}/*" in said and keys["no-delete"]["secret_access_key"] not in said
    assert refused("no-list")[0] == ["s3:ListBucket"]
    store = storage("full").open()
    store.check()  # every action allowed: the check passes, and put-if-absent is honoured
    uri = store.put("frames/cam1/a.jpg", b"frame")
    assert store.get("frames/cam1/a.jpg") == b"frame" and uri.startswith(f"s3://{BUCKET}/{prefix}/")
    # Outside the prefix the keys may list the bucket and nothing more: the check names the other three.
    assert refused("full", f"s3://{BUCKET}/elsewhere")[0] == list(ACTIONS[1:])
