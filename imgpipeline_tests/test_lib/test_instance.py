"""The instance `imgpipeline dev` writes: with the storage root on S3, each run's stdout and stderr go to
its bucket through dagster-aws's S3ComputeLogManager, its keys from the environment only."""

import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.storage.compute_log_manager import ComputeIOType
from dagster._serdes import serialize_value

from imgpipeline.defs.streaming.upkeep import delete_logs
from imgpipeline.lib.instance import (
    MARK,
    InstanceSettings,
    compute_logs_config,
    instance_env,
    write_instance_yaml,
)
from imgpipeline.resources import StorageResource
from imgpipeline.services.s3_endpoint import LOCAL_KEY_ID, LOCAL_SECRET
from imgpipeline_tests.conftest import s3_storage_resource
from imgpipeline_tests.instances import fresh_instance


@pytest.fixture
def s3_root(services, monkeypatch) -> StorageResource:
    """Storage on the S3 endpoint, set in the environment as a person sets it (the keys too), and read
    back from it: the keys held as EnvVars."""
    given = s3_storage_resource(services)
    for name, value in {"IMGPIPELINE_STORAGE_URI": given.uri, "AWS_ENDPOINT_URL": given.endpoint_url,
                        "AWS_ACCESS_KEY_ID": LOCAL_KEY_ID, "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET}.items():
        monkeypatch.setenv(name, value)
    storage = StorageResource.from_env()
    assert storage.secret_access_key == "AWS_SECRET_ACCESS_KEY"  # the variable, not the key
    return storage


@pytest.mark.integration
def test_dev_instance_for_an_s3_root_names_the_bucket_and_no_key(s3_root, tmp_path, monkeypatch):
    from imgpipeline.services.dagster_dev import dagster_env, dagster_home

    monkeypatch.setenv("IMGPIPELINE_INSTANCE", "sqlite")  # this file's blocks, whatever the session runs on
    state = tmp_path / ".imgpipeline"
    home = dagster_home(state)
    path = home / "dagster.yaml"
    text = path.read_text()
    assert not path.is_symlink() and MARK in text and "ForkingRunLauncher" in text
    location = s3_root.location
    config = yaml.safe_load(text)["compute_logs"]
    assert config == {"module": "dagster_aws.s3.compute_log_manager", "class": "S3ComputeLogManager",
                      "config": {"bucket": location.bucket, "prefix": f"{location.prefix}/compute_logs",
                                 "endpoint_url": s3_root.endpoint_url, "region": s3_root.region,
                                 "upload_interval": 30}}
    assert LOCAL_SECRET not in text and LOCAL_KEY_ID not in text
    # The keys reach `dagster dev` (its webserver, daemon and runs) through the environment instead.
    env = dagster_env(home, tmp_path)
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (LOCAL_KEY_ID, LOCAL_SECRET)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        logs = instance.compute_log_manager
        assert type(logs).__name__ == "S3ComputeLogManager"
        assert (logs._s3_bucket, logs._s3_prefix) == (location.bucket, f"{location.prefix}/compute_logs")
    # Back on a local folder: the link to the project's file again, and no key handed on.
    monkeypatch.delenv("IMGPIPELINE_STORAGE_URI")
    assert dagster_home(state) == home and path.is_symlink()
    assert "AWS_SECRET_ACCESS_KEY" not in dagster_env(home, tmp_path)


def test_both_blocks_on_postgres_with_an_s3_root(tmp_path):
    """The PostgreSQL storage and the S3 run logs side by side; neither the password nor a key written."""
    home, project = tmp_path / "home", tmp_path / "dagster.yaml"
    home.mkdir()
    project.write_text("telemetry:\n  enabled: false\n")
    postgres = InstanceSettings(kind="postgres", postgres_url="postgresql://u:hunter2@db:5432/dagster")
    storage = StorageResource(uri="s3://frames-bucket", access_key_id="AKIAEXAMPLE",
                              secret_access_key="s3cr3t")
    written = yaml.safe_load(write_instance_yaml(home, project, postgres, storage).read_text())
    assert written["storage"] == {"postgres": {"postgres_url": {"env": "IMGPIPELINE_POSTGRES_URL"}}}
    # A root at the bucket's top: the logs under compute_logs/; no endpoint: AWS's own.
    assert written["compute_logs"]["config"] == {"bucket": "frames-bucket", "prefix": "compute_logs",
                                                 "region": storage.region, "upload_interval": 30}
    text = (home / "dagster.yaml").read_text()
    assert [secret for secret in ("hunter2", "AKIAEXAMPLE", "s3cr3t") if secret in text] == []
    assert instance_env(postgres, storage)["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    local = StorageResource(uri=(tmp_path / "store").as_uri())
    assert compute_logs_config(local) is None and "AWS_SECRET_ACCESS_KEY" not in instance_env(postgres, local)


@dg.asset
def noisy(context: dg.AssetExecutionContext, storage: StorageResource) -> None:
    """Prints a line and stores an object through the storage resource's S3 client."""
    marker = context.run.tags["marker"]
    print(f"stdout says {marker}")
    print(f"stderr says {marker}", file=sys.stderr)
    storage.open().put(f"probes/{marker}.txt", marker.encode())


@pytest.mark.integration
@pytest.mark.instance
def test_a_runs_logs_are_objects_in_the_bucket_readable_after_the_run(s3_root, monkeypatch):
    """A real run on an instance with the block the project writes: its stdout and stderr are objects under
    `<prefix>/compute_logs/` once it ended, read back by a new instance as the UI reads them; the storage
    resource's nested S3 client reached the endpoint inside the run with the keys from the environment,
    and no key is in the run's config, its events or its logs."""
    for name, value in instance_env(InstanceSettings(), s3_root).items():
        monkeypatch.setenv(name, value)  # as `dagster dev` hands them on
    marker = f"marker-{uuid.uuid4().hex}"
    block = {"compute_logs": compute_logs_config(s3_root)}
    with fresh_instance(block) as instance:
        result = dg.materialize([noisy], instance=instance, resources={"storage": s3_root},
                                tags={"marker": marker})
        assert result.success
        (captured,) = [event.event_specific_data for event in result.all_events
                       if event.event_type_value == "LOGS_CAPTURED"]
        records = instance.all_logs(result.run_id)
        recorded = serialize_value([record.dagster_event for record in records if record.dagster_event])
        run_config = serialize_value(instance.get_run_by_id(result.run_id).run_config)

    store = s3_root.open()
    assert store.get(f"probes/{marker}.txt") == marker.encode()
    logs = store.list("compute_logs/")
    out = [key for key in logs if result.run_id in key and key.endswith(".out")]
    err = [key for key in logs if result.run_id in key and key.endswith(".err")]
    assert len(out) == len(err) == 1, logs
    assert f"stdout says {marker}" in store.get(out[0]).decode()
    assert f"stderr says {marker}" in store.get(err[0]).decode()
    for text in (recorded, run_config, store.get(out[0]).decode(), store.get(err[0]).decode()):
        assert LOCAL_SECRET not in text

    # A new instance, as the webserver has it, reads them from the bucket (its local copies are gone).
    with fresh_instance(block) as reader:
        manager = reader.compute_log_manager
        log_key = manager.build_log_key_for_run(result.run_id, captured.file_key)
        assert not manager.has_local_file(log_key, ComputeIOType.STDOUT)
        data, _ = manager.get_log_data_for_type(log_key, ComputeIOType.STDOUT, 0, None)
        assert f"stdout says {marker}" in data.decode()
        # Purged, the run's logs go with it: the objects, and the folder the run staged them in.
        staged = Path(manager.local_manager.get_captured_local_path(log_key, "out")).parents[1]
        assert staged.name == result.run_id and staged.exists()
        delete_logs(reader, result.run_id)
    assert not [key for key in store.list("compute_logs/") if result.run_id in key]
    assert not staged.exists()
