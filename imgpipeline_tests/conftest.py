"""Session fixtures: the real local Kafka broker and S3 endpoint, started with the same
launchers as `imgpipeline services`, on their own ports and folders."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

# Keep the checkout's own `.imgpipeline/` (and a running `services up`) out of the tests.
_HOME = Path(tempfile.mkdtemp(prefix="imgpipeline-test-home-"))
os.environ["IMGPIPELINE_HOME"] = str(_HOME)
for _name in ("KAFKA_BOOTSTRAP_SERVERS", "IMGPIPELINE_STORAGE_URI", "AWS_ENDPOINT_URL",
              "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "IMGPIPELINE_FRAMES_TOPIC"):
    os.environ.pop(_name, None)

from imgpipeline.resources import KafkaResource, StorageResource  # noqa: E402
from imgpipeline.services import LocalServices  # noqa: E402
from imgpipeline.services.s3_endpoint import BUCKET, LOCAL_KEY_ID, LOCAL_SECRET  # noqa: E402


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """Kafka and S3 for the whole session; stopped (and checked gone) at the end."""
    local = LocalServices(tmp_path_factory.mktemp("state"))
    local.up(log=lambda _msg: None)
    yield local
    local.down()


@pytest.fixture
def kafka(services) -> KafkaResource:
    """The session broker with a fresh frames topic (and DLQ) for this test."""
    resource = KafkaResource(
        bootstrap_servers=services.kafka.address(services.kafka.ports),
        frames_topic=f"frames-{uuid.uuid4().hex[:8]}",
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
