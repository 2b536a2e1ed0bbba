"""The MQTT broker the bridge reads and the alerts are published to: where it is, how to log in (the
password from the environment) and whether TLS is spoken; paho clients made with these settings, and what to
fix when the broker says no. A resource of the runs too: with a topic prefix set, they publish each alert,
each camera's latest snapshot and Home Assistant's discovery there (defs/alerts/mqtt_out.py)."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
from pydantic import field_validator, model_validator

from imgpipeline import ConfigError
from imgpipeline.resources.settings import FromEnv, env_name, resolved, setting

# CONNACK reason codes that are about the login (MQTT 5 numbering; paho maps MQTT 3.1.1's 4 and 5 to these).
LOGIN_REFUSED = {134: "Bad user name or password", 135: "Not authorized"}
CLIENT_ID_REFUSED = 133


class MqttSettings(FromEnv, dg.ConfigurableResource):
    """Where the MQTT broker is, how the bridge and the runs log in (the password from the environment only),
    the largest payload the bridge takes, and the topics the runs publish under."""

    broker: str = setting("IMGPIPELINE_MQTT_BROKER", "127.0.0.1:1883", "the MQTT broker, HOST:PORT")
    username: str | None = setting("IMGPIPELINE_MQTT_USERNAME", None, "MQTT user name")
    password: str | None = setting("IMGPIPELINE_MQTT_PASSWORD", None, "MQTT password (a secret)",
                                   secret=True)
    cafile: str | None = setting("IMGPIPELINE_MQTT_CAFILE", None,
                                 "PEM file of the broker's CA: TLS to the broker", shown="no TLS")
    max_payload_bytes: int = setting(
        "IMGPIPELINE_MQTT_MAX_PAYLOAD_BYTES", 20_000_000,
        "the bridge dead-letters a larger MQTT payload (never stored or sent as a frame), acknowledges it "
        "and goes on", ge=1)
    publish_prefix: str = setting(
        "IMGPIPELINE_MQTT_PUBLISH_PREFIX", "",
        "topic prefix the runs publish under (each alert on `<prefix>/alerts`, each camera's latest snapshot "
        "and last alert retained, Home Assistant's discovery under `homeassistant/`: docs/alerts.md); empty: "
        "nothing is published to MQTT", shown="— (off)")
    journal_days: int = setting(
        "IMGPIPELINE_MQTT_JOURNAL_DAYS", 7,
        "days the bridge remembers each frame's first capture time: a message delivered again within them "
        "keeps its time (and lands once); the journal keeps only these days' entries", ge=1)

    @field_validator("broker")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"IMGPIPELINE_MQTT_BROKER={value!r} is not HOST:PORT")
        return value

    @field_validator("password", mode="plain")
    @classmethod
    def _secret_kept(cls, value):
        # from_env gives a `dg.EnvVar`, a str naming the variable: kept as it is, it is read when used
        # (pydantic's str validation would turn it into the variable's name).
        if value is not None and not isinstance(value, str):
            raise ValueError("IMGPIPELINE_MQTT_PASSWORD is not text")
        return value

    @field_validator("publish_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9_.-]{1,64}){0,3}", value):
            raise ValueError(f"IMGPIPELINE_MQTT_PUBLISH_PREFIX={value[:80]!r}: a topic prefix is up to four "
                             "levels of letters, digits, '.', '_' and '-' joined by '/' (no wildcards)")
        return value

    @field_validator("cafile")
    @classmethod
    def _cafile_exists(cls, value: str | None) -> str | None:
        if value and not Path(value).is_file():
            raise ValueError(f"IMGPIPELINE_MQTT_CAFILE={value} is not a file; point it at the PEM file of "
                             "the CA that signed the MQTT broker's certificate")
        return value

    @model_validator(mode="after")
    def _login_complete(self):
        if self.password is not None and not self.username:
            raise ValueError(f"{self._env('password')} is set but {self._env('username')} is not: set "
                             "the user name too")
        return self

    def credentials(self) -> tuple[str | None, str | None]:
        """The user name and password, the password read from the environment when it is used."""
        return self.username, resolved(self.password)

    def client(self, client_id: str = "", **options):
        """A paho client (callback API 2) with the login and, with a CA file, TLS that checks the broker's
        certificate and host name; not yet connected."""
        import ssl

        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, **options)
        username, password = self.credentials()
        if username:
            client.username_pw_set(username, password)
        if self.cafile:
            try:
                client.tls_set(ca_certs=self.cafile, cert_reqs=ssl.CERT_REQUIRED)
            except ssl.SSLError as exc:
                raise ConfigError(f"{self._env('cafile')}={self.cafile} holds no CA certificate in PEM form "
                                  f"({exc.reason or exc})") from None
        return client

    def connect(self, client) -> None:
        """Connect the client (with TLS, the handshake too), or a ConfigError that says what to fix."""
        import ssl

        host, _, port = self.broker.rpartition(":")
        cafile = self._env("cafile")
        try:
            client.connect(host, int(port))
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(
                f"TLS verification of the MQTT broker at {self.broker} failed ({exc.verify_message}): its "
                f"certificate must be signed by the CA in {cafile}={self.cafile} and name {host}; point "
                f"{cafile} at the PEM file of the CA that signed it") from None
        except OSError as exc:
            # A plain listener answers a TLS hello with garbage or by resetting the connection.
            if self.cafile and isinstance(exc, ssl.SSLError | ConnectionResetError):
                why = getattr(exc, "reason", None) or exc
                raise ConfigError(f"no TLS handshake with the MQTT broker at {self.broker} ({why}): is "
                                  f"{port} its TLS port? Without TLS, leave {cafile} unset") from None
            raise ConfigError(f"cannot reach the MQTT broker at {self.broker}: {exc}") from None

    def refusal(self, reason_code) -> str:
        """What a refused connection (a CONNACK reason code) means and what to fix."""
        at = f"the MQTT broker at {self.broker}"
        if reason_code.value in LOGIN_REFUSED:
            login = f"user {self.username!r}" if self.username else "an anonymous login"
            return (f"{at} refused the credentials of {login} ({reason_code}): set {self._env('username')} "
                    f"and {self._env('password')} (in the environment) to a login it accepts")
        if reason_code.value == CLIENT_ID_REFUSED:
            return f"{at} refused the client id ({reason_code}): give another --client-id"
        return f"{at} refused the connection ({reason_code})"

    def closed_early(self, reason_code) -> str:
        """What a connection closed before the broker answered the login most likely means."""
        at = f"the MQTT broker at {self.broker}"
        if not self.cafile:
            return (f"{at} closed the connection before answering ({reason_code}); if it speaks TLS on "
                    f"this port, set {self._env('cafile')} to the PEM file of the CA that signed its "
                    "certificate")
        return f"{at} closed the connection before answering ({reason_code}); see the broker's log"

    def _env(self, name: str) -> str:
        return env_name(type(self), name)
