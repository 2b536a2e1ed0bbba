"""The MQTT bridge against a Mosquitto that speaks TLS only (a throwaway CA) and lets in only the users of
its password file: with the right CA and login, images land on Kafka; a wrong password, a CA that did not
sign the broker's certificate, no CA at all, or TLS against a plain port each stop the bridge with a
message that says what to fix, never a traceback, and the password appears in nothing it prints."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys

import pytest

from imgpipeline import ConfigError
from imgpipeline.ingest.messages import sha256_hex
from imgpipeline.resources.mqtt import MqttSettings
from imgpipeline.services.kafka_broker import make_tls
from imgpipeline.services.mosquitto import Mosquitto
from imgpipeline_tests.pipeline import wait_for
from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all
from imgpipeline_tests.test_ingest.test_mqtt import images, publish, publisher

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """Mosquitto with one TLS listener, its own CA, `allow_anonymous false` and a password file."""
    broker = Mosquitto(tmp_path_factory.mktemp("mqtt-tls"), secure=True)
    broker.start()
    yield broker
    broker.stop()


def test_the_password_comes_from_the_environment_and_shows_nowhere(monkeypatch, tmp_path):
    secret = secrets.token_urlsafe(12)
    monkeypatch.setenv("IMGPIPELINE_MQTT_USERNAME", "cam")
    monkeypatch.setenv("IMGPIPELINE_MQTT_PASSWORD", secret)
    settings = MqttSettings.from_env()
    assert settings.credentials() == ("cam", secret)  # the value, not the variable's name
    assert secret not in repr(settings) and secret not in json.dumps(settings.model_dump())
    monkeypatch.delenv("IMGPIPELINE_MQTT_USERNAME")
    with pytest.raises(ConfigError, match="IMGPIPELINE_MQTT_PASSWORD is set but IMGPIPELINE_MQTT_USERNAME"):
        MqttSettings.from_env()
    with pytest.raises(ConfigError, match="IMGPIPELINE_MQTT_CAFILE=.* is not a file"):
        MqttSettings.from_env(username="cam", cafile=str(tmp_path / "missing.pem"))
    (tmp_path / "not.pem").write_text("no certificate here\n")
    with pytest.raises(ConfigError, match="holds no CA certificate in PEM form"):
        MqttSettings(cafile=str(tmp_path / "not.pem")).client()


def bridge_env(tls_broker, kafka, tmp_path, **mqtt: str) -> dict[str, str]:
    """The bridge's environment: the TLS broker's settings, each of `mqtt` replacing one ("" unsets)."""
    settings = {**tls_broker.env(tls_broker.ports), **mqtt}
    return {**os.environ, **settings, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic, "IMGPIPELINE_HOME": str(tmp_path),
            "IMGPIPELINE_STORAGE_URI": (tmp_path / "store").as_uri()}


def bridge_command(client_id: str) -> list[str]:
    return [sys.executable, "-m", "imgpipeline.cli", "bridge", "mqtt", "--topic", "secure/+/frames",
            "--client-id", client_id]


def test_images_published_over_tls_with_a_login_reach_kafka(tls_broker, kafka, tmp_path):
    env = bridge_env(tls_broker, kafka, tmp_path)
    password = env["IMGPIPELINE_MQTT_PASSWORD"]
    bridge = subprocess.Popen(bridge_command("bridge-tls"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    first = bridge.stdout.readline()
    assert "bridge: subscribed" in first, first + bridge.stdout.read()
    login = tls_broker.credentials()
    camera = MqttSettings(broker=tls_broker.address(tls_broker.ports), username=login["user"],
                          password=login["password"], cafile=str(tls_broker.ca_file()))
    client = publisher(camera)  # over TLS, checking the broker's certificate, with the login
    sent = images(12, "tls")
    publish(client, "secure/cam-tls/frames", sent)
    client.loop_stop()
    client.disconnect()
    try:
        wait_for(lambda: len(read_all(kafka, kafka.frames_topic)) >= len(sent), 60, "the 12 frames on Kafka")
    finally:
        os.killpg(bridge.pid, signal.SIGINT)
    output = first + bridge.stdout.read()
    bridge.wait(timeout=30)
    landed = [json.loads(m.value) for m in read_all(kafka, kafka.frames_topic)]
    assert sorted(m["frame_id"] for m in landed) == sorted(f"cam-tls-{sha256_hex(p)[:20]}" for p in sent)
    assert "bridge: 12 messages forwarded" in output, output
    assert password not in output


def refused(tls_broker, kafka, tmp_path, services, case: str) -> dict[str, str]:
    """The environment of one misconfigured bridge."""
    if case == "wrong password":
        return bridge_env(tls_broker, kafka, tmp_path, IMGPIPELINE_MQTT_PASSWORD=secrets.token_urlsafe(12))
    if case == "a CA that did not sign the broker's certificate":
        other = make_tls(tmp_path / "other-ca", secrets.token_urlsafe(12)).parent / "ca.pem"
        return bridge_env(tls_broker, kafka, tmp_path, IMGPIPELINE_MQTT_CAFILE=str(other))
    if case == "no CA against the TLS port":
        return bridge_env(tls_broker, kafka, tmp_path, IMGPIPELINE_MQTT_CAFILE="")
    assert case == "TLS against a plain port"
    return bridge_env(tls_broker, kafka, tmp_path, IMGPIPELINE_MQTT_BROKER=services.mqtt.address(
        services.mqtt.ports))


@pytest.mark.parametrize("case, says", [
    ("wrong password", ["refused the credentials of user 'imgpipeline' (Not authorized)",
                        "IMGPIPELINE_MQTT_USERNAME and IMGPIPELINE_MQTT_PASSWORD"]),
    ("a CA that did not sign the broker's certificate", ["TLS verification of the MQTT broker",
                                                          "point IMGPIPELINE_MQTT_CAFILE at the PEM file"]),
    ("no CA against the TLS port", ["closed the connection before answering",
                                    "speaks TLS on this port, set IMGPIPELINE_MQTT_CAFILE"]),
    ("TLS against a plain port", ["no TLS handshake with the MQTT broker",
                                  "its TLS port? Without TLS, leave IMGPIPELINE_MQTT_CAFILE unset"]),
])
def test_a_misconfigured_bridge_says_what_to_fix(tls_broker, kafka, tmp_path, services, case, says):
    env = refused(tls_broker, kafka, tmp_path, services, case)
    done = subprocess.run(bridge_command("bridge-refused"), env=env, capture_output=True, text=True,
                          timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert output.count("imgpipeline: ") == 1 and "Traceback" not in output, output
    # The refusal itself ends the bridge, not its wait for the subscriptions.
    assert all(words in output for words in says) and "did not confirm" not in output, output
    for password in (env["IMGPIPELINE_MQTT_PASSWORD"], tls_broker.credentials()["password"]):
        assert password not in output


def test_alerts_are_published_with_the_login_and_a_refused_one_says_what_to_fix(tls_broker, monkeypatch,
                                                                                 tmp_path):
    """The alerts' publisher against the TLS broker that wants a login: with it, the alert is published
    and recorded once; with a wrong password, nothing is, the run goes on, and the warning says to fix the
    login without the password."""
    from imgpipeline.defs.alerts.ledger import Ledger
    from imgpipeline.defs.alerts.mqtt_out import MQTT_RECORD, publish_alerts
    from imgpipeline.resources import StorageResource

    for name, value in tls_broker.env(tls_broker.ports).items():
        monkeypatch.setenv(name, value)
    ledger = Ledger(StorageResource(uri=(tmp_path / "store").as_uri()).open())
    message = {"number": 7, "rule": "r", "source_id": "cam", "frame_id": "f"}
    wrong = secrets.token_urlsafe(12)
    said: list[str] = []
    refused = MqttSettings.from_env(password=wrong, publish_prefix="site")
    assert publish_alerts(refused, ledger, [message], said.append) == 0
    assert len(said) == 1 and "refused the credentials" in said[0] and wrong not in said[0], said
    assert ledger.sent(7, MQTT_RECORD) is None
    assert publish_alerts(MqttSettings.from_env(publish_prefix="site"), ledger, [message], said.append) == 1
    assert ledger.sent(7, MQTT_RECORD)["state"] == "delivered" and len(said) == 1


@pytest.mark.parametrize("prefix", ["a/#", "+/alerts", "/site", "site/", "a/b/c/d/e", "sité", "a b", "a\nb"])
def test_a_publish_prefix_that_is_no_plain_topic_is_refused(prefix):
    with pytest.raises(ValueError, match="a topic prefix is up to four levels"):
        MqttSettings(publish_prefix=prefix)
    assert MqttSettings(publish_prefix="sites/north.gate_1").publish_prefix == "sites/north.gate_1"
