"""Session fixtures: the real local Kafka broker and S3 endpoint, started with the same
launchers as `imgpipeline services`, on their own ports and folders."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from imgpipeline.resources import KafkaResource, StorageResource
from imgpipeline.services import LocalServices
from imgpipeline.services.s3_endpoint import BUCKET, LOCAL_KEY_ID, LOCAL_SECRET, REGION

# Settings of the shell or a running `services up` that must not reach the tests.
_ISOLATED = ("KAFKA_BOOTSTRAP_SERVERS", "IMGPIPELINE_STORAGE_URI", "AWS_ENDPOINT_URL",
             "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "IMGPIPELINE_FRAMES_TOPIC",
             "IMGPIPELINE_INSTANCE", "IMGPIPELINE_POSTGRES_URL")
_saved: dict[str, str | None] = {}


def pytest_configure(config):
    """Before any test module is imported: a home of the tests' own, so the checkout's `.imgpipeline/`
    and `.env` stay out; put back as it was when the session ends. Processes the tests start stop on
    SIGTERM and SIGINT as they would from a terminal, even when the shell that started the tests ignored
    those signals (its children would inherit that)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    home = tempfile.mkdtemp(prefix="imgpipeline-test-home-")
    for name in ("IMGPIPELINE_HOME", *_ISOLATED):
        _saved[name] = os.environ.pop(name, None)
    os.environ["IMGPIPELINE_HOME"] = home


def pytest_unconfigure(config):
    shutil.rmtree(os.environ.get("IMGPIPELINE_HOME", ""), ignore_errors=True)
    for name, value in _saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session", autouse=True)
def instance_server(tmp_path_factory):
    """With IMGPIPELINE_TEST_INSTANCE=postgres: a PostgreSQL server for the session (the launcher of
    `imgpipeline services up --instance postgres`), every Dagster instance of the tests on it."""
    from imgpipeline.lib.instance import InstanceSettings
    from imgpipeline.resources.settings import env_name
    from imgpipeline.services import Postgres
    from imgpipeline_tests.instances import SERVER, TEMPLATE, make_template, session_instance_kind

    if session_instance_kind() != "postgres":
        yield None
        return
    server = Postgres(tmp_path_factory.mktemp("postgres"))
    server.start()
    ports = server.ports
    server.sql(ports, f"CREATE DATABASE {TEMPLATE}")
    make_template(server.url(ports, TEMPLATE))
    kind = env_name(InstanceSettings, "kind")
    os.environ[kind] = "postgres"
    SERVER.append(server)
    yield server
    SERVER.clear()
    os.environ.pop(kind, None)
    server.stop()
    shutil.rmtree(server.data, ignore_errors=True)


@pytest.fixture(autouse=True)
def instance_database(request, instance_server, monkeypatch):
    """On PostgreSQL, each test marked `instance` has a database of its own, a copy of the template's
    tables. Other tests get none: one that opened an instance unmarked would fail, not pass on SQLite."""
    if instance_server is None or request.node.get_closest_marker("instance") is None:
        yield None
        return
    from imgpipeline.lib.instance import url_env
    from imgpipeline_tests.instances import drop_database, new_database

    url = new_database()
    monkeypatch.setenv(url_env(), url)
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """Kafka and S3 for the whole session; stopped (and checked gone) at the end."""
    local = LocalServices(tmp_path_factory.mktemp("state"))
    local.up(log=lambda _msg: None)
    yield local
    local.down()


@pytest.fixture
def kafka(services) -> KafkaResource:
    """The session broker with fresh frames and alerts topics (and their DLQs) for this test."""
    resource = KafkaResource(
        bootstrap_servers=services.kafka.address(services.kafka.ports),
        frames_topic=f"frames-{uuid.uuid4().hex[:8]}",
        alerts_topic=f"alerts-{uuid.uuid4().hex[:8]}",
    )
    resource.ensure_topics(partitions=2)
    return resource


def s3_storage_resource(services, prefix: str | None = None) -> StorageResource:
    return StorageResource(
        uri=f"s3://{BUCKET}/{prefix or uuid.uuid4().hex[:8]}",
        endpoint_url=services.s3.address(services.s3.ports),
        access_key_id=LOCAL_KEY_ID,
        secret_access_key=LOCAL_SECRET,
    )


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> StorageResource:
    """The project's storage resource on each backend: a local folder and the S3 endpoint."""
    if request.param == "local":
        return StorageResource(uri=(tmp_path / "store").as_uri())
    return s3_storage_resource(request.getfixturevalue("services"))


@contextmanager
def s3_user(services, denied: list[str]) -> Iterator[StorageResource]:
    """Storage on the S3 endpoint as a user of its own, allowed everything but reading the `denied`
    keys (patterns relative to a fresh root). Meanwhile the endpoint checks every request's signature
    and permissions as AWS does (moto's IAM emulation), so the session's own login is refused."""
    import boto3

    endpoint, prefix, user = services.s3.address(services.s3.ports), uuid.uuid4().hex[:8], uuid.uuid4().hex
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=LOCAL_KEY_ID,
                       aws_secret_access_key=LOCAL_SECRET)
    iam.create_user(UserName=user)
    login = iam.create_access_key(UserName=user)["AccessKey"]
    statements = [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]
    if denied:
        statements.append({"Effect": "Deny", "Action": "s3:GetObject",
                           "Resource": [f"arn:aws:s3:::{BUCKET}/{prefix}/{key}" for key in denied]})
    iam.put_user_policy(UserName=user, PolicyName="reader", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": statements}))
    checks_after(endpoint, "0")
    try:
        yield StorageResource(uri=f"s3://{BUCKET}/{prefix}", endpoint_url=endpoint,
                              access_key_id=login["AccessKeyId"], secret_access_key=login["SecretAccessKey"])
    finally:
        checks_after(endpoint, "inf")


def checks_after(endpoint: str, requests: str) -> None:
    """moto's switch: the endpoint checks signatures and permissions after this many more requests."""
    from urllib.request import Request, urlopen

    switch = Request(f"{endpoint}/moto-api/reset-auth", data=requests.encode(),
                     headers={"Content-Type": "text/plain"})
    with urlopen(switch, timeout=10) as answer:
        assert answer.status == 200
