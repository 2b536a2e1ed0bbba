import contextlib
import os
import uuid

import pytest

from imgpipeline import ConfigError
from imgpipeline.ingest.messages import sha256_hex
from imgpipeline.resources import StorageResource
from imgpipeline.resources.storage import BadObject
from imgpipeline.services.s3_endpoint import LOCAL_KEY_ID, LOCAL_SECRET
from imgpipeline_tests.conftest import s3_relay, s3_storage_resource, s3_user

pytestmark = pytest.mark.integration


def test_missing_bucket_names_the_fix(services):
    resource = s3_storage_resource(services)
    missing = StorageResource(**{**resource.model_dump(), "uri": f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/x"})
    with pytest.raises(ConfigError, match=r"bucket 'no-such-bucket-\w+' does not exist at http://127"):
        missing.open().check()


def test_local_writes_of_one_key_do_not_share_a_temp_file(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    bodies = [bytes([i]) * 200_000 for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda body: store.put("landing/x.jsonl", body), bodies))
    assert store.get("landing/x.jsonl") in bodies  # one writer's whole bytes, never a mix
    assert sorted(p.name for p in (tmp_path / "store" / "landing").iterdir()) == ["x.jsonl"]


def test_a_key_naming_a_folder_or_too_long_a_name_is_a_bad_object(tmp_path):
    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    store.put("frames/cam/2026-11-20/a.jpg", b"x")
    for key in ("frames/cam/2026-11-20", "frames/cam/" + "a" * 300 + ".jpg"):
        with pytest.raises(BadObject, match="cannot be read|does not exist"):
            store.get(key)


@contextlib.contextmanager
def ignoring_put_if_absent(endpoint: str):
    """An S3 endpoint that ignores `If-None-Match`, as S3-compatible servers before 2024 do: a real HTTP
    proxy in front of the local endpoint that drops the header from every request."""
    with s3_relay(endpoint, drop_headers=frozenset({"if-none-match"})) as relay:
        yield relay.url


def test_a_store_that_ignores_put_if_absent_is_refused_and_replaces_nothing(services, tmp_path, monkeypatch):
    """`imgpipeline check` says whether the store honours put-if-absent; on one that does not, storing a
    frame and numbering an alert refuse (ConfigError) instead of overwriting."""
    from imgpipeline.defs.alerts.ledger import Ledger
    from imgpipeline.resources.storage import s3 as storage_module

    # What the process learnt of each endpoint, its own here: the proxy's port may be another's later.
    monkeypatch.setattr(storage_module, "_CONDITIONAL_WRITES", {})
    from imgpipeline_tests.test_services.test_postgres import cli

    direct = s3_storage_resource(services)
    assert direct.open().conditional_writes()
    with ignoring_put_if_absent(direct.endpoint_url) as endpoint:
        resource = StorageResource(**{**direct.model_dump(), "endpoint_url": endpoint})
        store = resource.open()
        key = f"frames/cam1/2026-11-20/{uuid.uuid4().hex}.jpg"
        store.put(key, b"the frame")
        with pytest.raises(ConfigError, match="ignores conditional writes"):
            store.check()
        with pytest.raises(ConfigError, match="ignores conditional writes"):
            store.put_new(key, b"other bytes", sha256=sha256_hex(b"other bytes"))
        with pytest.raises(ConfigError, match="ignores conditional writes"):
            Ledger(store).number("rule/cam1/2026-11-20T10")
        assert store.get(key) == b"the frame"
        assert store.list("alerts/") == []  # not even a claim
        assert not [k for k in direct.open().list() if "conditional-write-check" in k]  # probes cleaned up

        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KAFKA_"))},
               "IMGPIPELINE_HOME": str(tmp_path), "IMGPIPELINE_STORAGE_URI": resource.uri,
               "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": LOCAL_KEY_ID,
               "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET,
               "KAFKA_BOOTSTRAP_SERVERS": services.kafka.address(services.kafka.ports)}
        refused = cli("check", env=env, timeout=120)
        assert refused.returncode != 0 and "ignores conditional writes" in refused.stderr + refused.stdout
        assert "Traceback" not in refused.stderr
    honoured = cli("check", env={**env, "AWS_ENDPOINT_URL": direct.endpoint_url}, timeout=120)
    assert honoured.returncode == 0, honoured.stderr[-2000:]
    assert "put-if-absent honoured" in honoured.stdout


def test_an_object_the_store_refuses_alone_is_a_bad_object():
    with s3_user(denied=["frames/denied.jpg"]) as resource:
        store = resource.open()
        for name in ("ok", "denied"):
            store.put(f"frames/{name}.jpg", name.encode())
        store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/frames/archived.jpg", Body=b"cold",
                                StorageClass="GLACIER")
        assert store.get("frames/ok.jpg") == b"ok"
        with pytest.raises(BadObject, match=r"frames/denied.jpg cannot be read .*: AccessDenied \(403\)"):
            store.get("frames/denied.jpg")
        with pytest.raises(BadObject, match=r"frames/archived.jpg cannot be read .*: InvalidObjectState"):
            store.get("frames/archived.jpg")


def test_a_store_that_refuses_every_read_is_no_object_s_fault(services):
    from botocore.exceptions import ClientError

    with s3_user(denied=["*"]) as resource:
        store = resource.open()
        store.put("frames/a.jpg", b"a")
        with pytest.raises(ClientError, match="AccessDenied"):
            store.get("frames/a.jpg")
        stranger = StorageResource(**{**resource.model_dump(), "access_key_id": "AKIA" + "0" * 16}).open()
        with pytest.raises(ClientError, match="InvalidAccessKeyId"):
            stranger.get("frames/a.jpg")
    gone = StorageResource(**{**s3_storage_resource(services).model_dump(),
                              "uri": f"s3://gone-{uuid.uuid4().hex[:8]}/x"}).open()
    with pytest.raises(ClientError, match="NoSuchBucket"):
        gone.get("frames/a.jpg")


def test_a_kms_refusal_is_one_object_s_while_the_store_reads():
    # moto keeps an object's KMS key id but never asks KMS on a read, so no read of it is refused: the
    # refusal's code is given here, and whether the store still reads is asked of the endpoint.
    with s3_user(denied=[]) as resource:
        assert resource.open().refused_alone("KMS.DisabledException", 400)
    with s3_user(denied=["*"]) as resource:
        assert not resource.open().refused_alone("KMS.DisabledException", 400)
        assert not resource.open().refused_alone("AccessDenied", 403)


def test_the_s3_client_is_the_nested_resource(services, monkeypatch):
    """The storage resource's S3 client comes from its nested resource `s3`, whose endpoint, region and
    keys are the S3 settings: it reaches the endpoint they name, once per resource. The code location's
    storage resource shows it nested in the Dagster UI."""
    from dagster._core.remote_representation.external_data import NestedResourceType, RepositorySnap

    from imgpipeline.resources import S3ClientResource

    endpoint = services.s3.address(services.s3.ports)
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": LOCAL_KEY_ID,
                        "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET, "AWS_REGION": "eu-west-3"}.items():
        monkeypatch.setenv(name, value)
    resource = StorageResource.from_env(uri=s3_storage_resource(services).uri)
    assert isinstance(resource.s3, S3ClientResource) and resource.nested_resources == {"s3": resource.s3}
    assert (resource.endpoint_url, resource.region) == (resource.s3.endpoint_url, "eu-west-3") == (
        endpoint, resource.s3.region_name)
    store = resource.open()
    assert store is resource.open()  # one client per resource
    assert store.client.meta.endpoint_url == endpoint and store.client.meta.region_name == "eu-west-3"
    store.put("frames/through-the-nested-client.jpg", b"bytes")
    assert s3_storage_resource(services, resource.location.prefix).open().get(
        "frames/through-the-nested-client.jpg") == b"bytes"
    # The probes' client is the same resource with its own timeouts and a single attempt.
    probe = S3ClientResource(endpoint_url=endpoint, aws_access_key_id=LOCAL_KEY_ID,
                             aws_secret_access_key=LOCAL_SECRET, max_attempts=1, connect_timeout=2)
    assert probe.get_client().head_bucket(Bucket=resource.location.bucket)["ResponseMetadata"][
        "HTTPStatusCode"] == 200

    from imgpipeline.definitions import defs

    snap = RepositorySnap.from_def(defs.get_repository_def())
    (storage,) = [snap_resource for snap_resource in snap.resources if snap_resource.name == "storage"]
    nested = storage.nested_resources["s3"]
    assert (nested.type, nested.name) == (NestedResourceType.ANONYMOUS, "S3ClientResource")
