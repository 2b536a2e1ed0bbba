"""Secrets never leave through what the project says: URLs as shown, error text with a URL's secrets
taken out, camera URLs from the environment, and a services.env only its owner reads."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from imgpipeline.redaction import redact, shown_url

SECRETS = ("pa55-SECRET", "tok-SECRET", "sig-SECRET")


@pytest.mark.parametrize("url, shown, path", [
    ("rtsp://admin:pa55-SECRET@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1", True),
    ("rtsp://admin:pa55%40SECRET@cam/s", "rtsp://***@cam/s", True),
    ("https://hooks.example.com/services/T0/tok-SECRET?sig=sig-SECRET", "https://hooks.example.com/***?***",
     False),
    ("http://tok-SECRET@[::1]:8080/v.mp4", "http://***@[::1]:8080/v.mp4", True),  # a token as the user
    ("http://bot:pa55-SECRET@host:notaport/x", "***", True),  # cannot be taken apart: nothing of it
    ("http://host/tok-SECRET", "http://host/***", False),
    ("videos/street.mp4", "videos/street.mp4", True),  # a file path is not a secret
])
def test_a_url_is_shown_without_its_secrets(url, shown, path):
    assert shown_url(url, path=path) == shown
    assert not [s for s in SECRETS if s in shown_url(url, path=path)]


def test_error_text_loses_every_piece_of_the_url_it_repeats():
    url = "https://bot:pa55-SECRET@hooks.example.com/services/T0/tok-SECRET?sig=sig-SECRET"
    texts = [
        f"cannot reach {url}",
        "Max retries exceeded with url: /services/T0/tok-SECRET?sig=sig-SECRET",
        "URL can't contain control characters. '/services/T0/tok-SECRET\\x01'",
        "nonnumeric port: 'pa55-SECRET@hooks.example.com'",
        "pa55%2DSECRET in a percent-encoded form",  # not how the URL wrote it: left alone
        "another URL's login: postgresql://u:p@db/x",
    ]
    said = [redact(text, url, paths=False) for text in texts]
    assert not [s for s in SECRETS for text in said[:4] if s in text]
    assert said[5] == "another URL's login: postgresql://***@db/x"
    assert redact("rtsp://admin:pa55-SECRET@cam/stream1 dropped", "rtsp://admin:pa55-SECRET@cam/stream1") == (
        "rtsp://***@cam/stream1 dropped")


def test_services_env_is_written_for_its_owner_only(tmp_path, monkeypatch):
    from imgpipeline.environment import services_env_file, write_services_env

    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    services_env_file().parent.mkdir(parents=True)
    services_env_file().write_text("OLD=1\n")
    services_env_file().chmod(0o644)  # an earlier one anybody could read
    path = write_services_env("KAFKA_SASL_PASSWORD=x\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "KAFKA_SASL_PASSWORD=x\n"


@pytest.mark.integration
def test_a_camera_url_comes_from_the_environment_and_is_never_said(kafka, tmp_path):
    """`produce video env:NAME` reads the URL from a variable (off the command line); a URL that cannot
    be opened is named without its login or query, on stderr and stdout alike."""
    from imgpipeline.services.process import free_port

    url = f"http://viewer:pa55-SECRET@127.0.0.1:{free_port()}/street.mp4?token=tok-SECRET"
    env = {**os.environ, "IMGPIPELINE_HOME": str(tmp_path), "CAM2_URL": url,
           "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic,
           "IMGPIPELINE_STORAGE_URI": (tmp_path / "s").as_uri()}

    def produce(path: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "imgpipeline.cli", "produce", "video", path, "--source",
                               "cam2"], env=env, capture_output=True, text=True, timeout=120)

    for given in ("env:CAM2_URL", url):
        result = produce(given)
        assert result.returncode != 0
        assert "cannot open video 'http://***@127.0.0.1:" in result.stderr
        assert "/street.mp4?***'" in result.stderr
        assert not [s for s in SECRETS if s in result.stdout + result.stderr], result.stderr[-500:]
    unset = produce("env:CAM9_URL")
    assert unset.returncode != 0 and "CAM9_URL is not set" in unset.stderr and "Traceback" not in unset.stderr
    assert "after env: comes the name" in produce("env:9;rm").stderr
