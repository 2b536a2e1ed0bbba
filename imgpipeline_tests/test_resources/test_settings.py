import os

import pytest

from imgpipeline import ConfigError
from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.environment import cores, read_env_file
from imgpipeline.resources import KafkaResource, StorageResource
from imgpipeline.resources.storage import parse_storage_uri


def test_unknown_storage_scheme_names_the_fix(monkeypatch):
    monkeypatch.setenv("IMGPIPELINE_STORAGE_URI", "ftp://host/frames")
    with pytest.raises(ConfigError, match=r"unknown scheme 'ftp'.*file:///.*s3://bucket/prefix"):
        StorageResource.from_env()


@pytest.mark.parametrize("uri", ["s3://Bad_Bucket/x", "s3://ab/x", "s3:///prefix"])
def test_invalid_bucket_names_are_refused(uri):
    with pytest.raises(ConfigError, match="not a valid S3 bucket name"):
        parse_storage_uri(uri)


def test_storage_uri_forms():
    s3 = parse_storage_uri("s3://my-bucket/some/prefix/")
    assert (s3.scheme, s3.bucket, s3.prefix) == ("s3", "my-bucket", "some/prefix")
    local = parse_storage_uri("file:///var/tmp/frames")
    assert (local.scheme, str(local.folder)) == ("file", "/var/tmp/frames")
    with pytest.raises(ConfigError, match="three slashes"):
        parse_storage_uri("file://var/tmp")


def test_sasl_needs_mechanism_and_credentials(monkeypatch):
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError, match="KAFKA_SASL_MECHANISM"):
        KafkaResource.from_env()
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "scram-sha-512")
    with pytest.raises(ConfigError, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        KafkaResource.from_env()
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    kafka = KafkaResource.from_env()
    assert kafka.sasl_mechanism == "SCRAM-SHA-512"
    # The resource holds the variable, not the password: it stays in the environment.
    assert "s3cret" not in repr(kafka)


def test_unknown_security_protocol(monkeypatch):
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ConfigError, match="one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"):
        KafkaResource.from_env()


def test_env_files_do_not_override_the_shell(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    (tmp_path / ".imgpipeline").mkdir()
    (tmp_path / ".imgpipeline" / "services.env").write_text(
        "# local\nKAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1111\nIMGPIPELINE_FRAMES_TOPIC=cams\n"
    )
    monkeypatch.setenv("IMGPIPELINE_FRAMES_TOPIC", "from-shell")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    kafka = KafkaResource.from_env()
    assert kafka.bootstrap_servers == "127.0.0.1:1111"
    assert kafka.frames_topic == "from-shell"
    assert StorageResource.from_env().uri == (tmp_path / ".imgpipeline" / "data").as_uri()


def test_malformed_env_file_line(tmp_path):
    path = tmp_path / "x.env"
    path.write_text("GOOD=1\nnot a setting\n")
    with pytest.raises(ConfigError, match=r"x.env:2: expected KEY=VALUE"):
        read_env_file(path)


def test_sensor_watch_must_end_before_the_next_tick(monkeypatch):
    monkeypatch.setenv("IMGPIPELINE_SENSOR_WATCH_S", "4.5")
    with pytest.raises(ConfigError, match=r"IMGPIPELINE_SENSOR_WATCH_S=4.5 is too long.*at most 4 or 0"):
        BatchPolicy.from_env()
    monkeypatch.setenv("IMGPIPELINE_SENSOR_INTERVAL_S", "10")
    assert BatchPolicy.from_env().watch_s == 4.5


def test_a_resource_built_directly_is_checked_as_from_the_environment():
    with pytest.raises(ValueError, match="KAFKA_SASL_MECHANISM"):
        KafkaResource(security_protocol="SASL_SSL")
    with pytest.raises(ValueError, match="unknown scheme 'gs'"):
        StorageResource(uri="gs://bucket/x")
    with pytest.raises(ValueError, match="IMGPIPELINE_SENSOR_WATCH_S=4.5 is too long"):
        BatchPolicy(watch_s=4.5)


def test_a_default_is_declared_once(monkeypatch):
    for name in ("IMGPIPELINE_SENSOR_WATCH_S", "IMGPIPELINE_MAX_BATCH"):
        monkeypatch.delenv(name, raising=False)
    assert BatchPolicy().watch_s == BatchPolicy.from_env().watch_s == 3.5
    assert BatchPolicy().max_batch == BatchPolicy.from_env().max_batch == 500


def test_a_bad_number_names_its_variable(monkeypatch):
    monkeypatch.setenv("IMGPIPELINE_MAX_BATCH", "many")
    with pytest.raises(ConfigError, match=r"IMGPIPELINE_MAX_BATCH='many': .*integer"):
        BatchPolicy.from_env()
    monkeypatch.setenv("IMGPIPELINE_MAX_BATCH", "0")
    with pytest.raises(ConfigError, match=r"IMGPIPELINE_MAX_BATCH='0': .*greater than or equal to 1"):
        BatchPolicy.from_env()


def test_a_bad_partitions_start_names_its_variable(monkeypatch):
    from imgpipeline.defs.partitions import Calendar

    monkeypatch.setenv("IMGPIPELINE_PARTITIONS_START", "2026-13-01")
    with pytest.raises(ConfigError, match=r"IMGPIPELINE_PARTITIONS_START='2026-13-01'"):
        Calendar.from_env()


def test_capture_times_out_of_the_partitions_range_say_why(monkeypatch):
    from datetime import UTC, datetime, timedelta

    from imgpipeline.defs.partitions import Calendar

    monkeypatch.setenv("IMGPIPELINE_FUTURE_LIMIT_MIN", "30")
    calendar = Calendar.from_env()
    received = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    assert calendar.out_of_range(received + timedelta(minutes=30), received) is None
    assert calendar.out_of_range(datetime(2026, 1, 1, tzinfo=UTC), received) is None
    assert "before the partitions' start 2026-01-01 (IMGPIPELINE_PARTITIONS_START)" in calendar.out_of_range(
        datetime(2025, 12, 31, 23, 59, tzinfo=UTC), received)
    assert "31 min after the frame reached the broker" in calendar.out_of_range(
        received + timedelta(minutes=31), received)
    monkeypatch.setenv("IMGPIPELINE_FUTURE_LIMIT_MIN", "0")
    with pytest.raises(ConfigError, match=r"IMGPIPELINE_FUTURE_LIMIT_MIN='0'"):
        Calendar.from_env()


def test_a_secret_from_an_env_file_is_held_as_its_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "")  # restored to what it was when the test ends
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (tmp_path / ".env").write_text("AWS_SECRET_ACCESS_KEY=from-the-file\n")
    storage = StorageResource.from_env()
    assert "from-the-file" not in repr(storage) + storage.model_dump_json()
    assert storage.secret_access_key == "AWS_SECRET_ACCESS_KEY"  # an EnvVar names its variable
    assert storage.secret_access_key.get_value() == "from-the-file"


def test_the_region_falls_back_to_aws_default_region(monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert StorageResource.from_env().region == "eu-central-1"
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert StorageResource.from_env().region == "eu-west-3"


def test_dot_env_wins_over_services_env_and_reaches_paths(monkeypatch, tmp_path):
    from imgpipeline.environment import models_dir

    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    for name in ("IMGPIPELINE_FRAMES_TOPIC", "IMGPIPELINE_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".imgpipeline").mkdir()
    (tmp_path / ".imgpipeline" / "services.env").write_text("IMGPIPELINE_FRAMES_TOPIC=from-services\n")
    (tmp_path / ".env").write_text(
        f"IMGPIPELINE_FRAMES_TOPIC=from-dot-env\nIMGPIPELINE_MODELS_DIR={tmp_path}/m\n")
    assert KafkaResource.from_env().frames_topic == "from-dot-env"
    assert models_dir() == tmp_path / "m"


def test_an_unknown_model_source_names_the_choices(monkeypatch):
    from imgpipeline.cli.fetch import fetch_weights

    monkeypatch.setenv("IMGPIPELINE_MODEL_SOURCE", "huggingface")
    with pytest.raises(ConfigError, match="MODEL_SOURCE='huggingface' is not known; use one of auto"):
        fetch_weights(log=lambda line: None)


def test_a_renamed_setting_stops_the_check_with_its_new_name(monkeypatch):
    from imgpipeline.cli.settings import check_settings

    monkeypatch.setenv("IMGPIPELINE_MAX_RUNS_IN_FLIGHT", "4")
    with pytest.raises(ConfigError, match=r"IMGPIPELINE_MAX_RUNS_IN_FLIGHT is no longer read: use "
                                          r"IMGPIPELINE_RUNS_PER_PARTITION, .* and "
                                          r"IMGPIPELINE_TOTAL_RUNS_IN_FLIGHT"):
        check_settings()
    monkeypatch.delenv("IMGPIPELINE_MAX_RUNS_IN_FLIGHT")
    monkeypatch.setenv("IMGPIPELINE_TOTAL_RUNS_IN_FLIGHT", "40")
    check_settings()  # the setting over all partitions is read
    monkeypatch.setenv("IMGPIPELINE_RUNS_PER_PARTITION", "0")
    with pytest.raises(ConfigError, match=r"IMGPIPELINE_RUNS_PER_PARTITION='0': .*greater than or equal"):
        check_settings()


@pytest.mark.parametrize(("files", "expected"), [
    ({}, "all"),  # no cgroup files: the CPUs the process may run on
    ({"cpu.max": "150000 100000"}, 2),  # a pod's limit of 1.5 CPUs: 2 whole ones
    ({"cpu.max": "50000 100000"}, 1),
    ({"cpu.max": "max 100000"}, "all"),  # cgroup v2 without a quota
    ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, "all"),
    # what cannot be a quota leaves the CPUs as they are
    ({"cpu.max": ""}, "all"), ({"cpu.max": "garbage"}, "all"), ({"cpu.max": "0 100000"}, "all"),
    ({"cpu.max": "100000 0"}, "all"), ({"cpu.max": "nan 1"}, "all"), ({"cpu.max": "1e309 1"}, "all"),
    ({"cpu.max": "\x00\xff 1"}, "all"), ({"cpu/cpu.cfs_quota_us": "100000"}, "all"),
])
def test_the_cores_settings_scale_with_are_the_cpus_and_a_quota_lowers_them(tmp_path, monkeypatch, files,
                                                                            expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cores(tmp_path) == (8 if expected == "all" else expected)
