import pytest

from imgpipeline.config import ConfigError, Settings, parse_storage_uri, read_env_file


def test_unknown_storage_scheme_names_the_fix(monkeypatch):
    monkeypatch.setenv("IMGPIPELINE_STORAGE_URI", "ftp://host/frames")
    with pytest.raises(ConfigError, match=r"unknown scheme 'ftp'.*file:///.*s3://bucket/prefix"):
        Settings.from_env()


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
        Settings.from_env()
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "scram-sha-512")
    with pytest.raises(ConfigError, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        Settings.from_env()
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    settings = Settings.from_env()
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    # The password is no field of the settings: it stays in the environment.
    assert "s3cret" not in repr(settings)


def test_unknown_security_protocol(monkeypatch):
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ConfigError, match="one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"):
        Settings.from_env()


def test_env_files_do_not_override_the_shell(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    (tmp_path / ".imgpipeline").mkdir()
    (tmp_path / ".imgpipeline" / "services.env").write_text(
        "# local\nKAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1111\nIMGPIPELINE_FRAMES_TOPIC=cams\n"
    )
    monkeypatch.setenv("IMGPIPELINE_FRAMES_TOPIC", "from-shell")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    settings = Settings.from_env()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:1111"
    assert settings.frames_topic == "from-shell"
    assert settings.storage_uri == (tmp_path / ".imgpipeline" / "data").as_uri()


def test_malformed_env_file_line(tmp_path):
    path = tmp_path / "x.env"
    path.write_text("GOOD=1\nnot a setting\n")
    with pytest.raises(ConfigError, match=r"x.env:2: expected KEY=VALUE"):
        read_env_file(path)


def test_sensor_watch_must_end_before_the_next_tick(monkeypatch):
    monkeypatch.setenv("IMGPIPELINE_SENSOR_WATCH_S", "4.5")
    with pytest.raises(ConfigError, match=r"IMGPIPELINE_SENSOR_WATCH_S=4.5 is too long.*at most 4 or 0"):
        Settings.from_env()
    monkeypatch.setenv("IMGPIPELINE_SENSOR_INTERVAL_S", "10")
    assert Settings.from_env().sensor_watch_s == 4.5
