"""The MQTT broker the bridge reads: where it is and how to log in (the password from the environment)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

from imgpipeline.resources.settings import FromEnv, resolved, setting


class MqttSettings(FromEnv, BaseModel):
    """Where the MQTT broker is and how the bridge logs in (the password from the environment only)."""

    model_config = ConfigDict(extra="forbid")

    broker: str = setting("IMGPIPELINE_MQTT_BROKER", "127.0.0.1:1883", "the MQTT broker, HOST:PORT")
    username: str | None = setting("IMGPIPELINE_MQTT_USERNAME", None, "MQTT user name")
    password: str | None = setting("IMGPIPELINE_MQTT_PASSWORD", None, "MQTT password (a secret)",
                                   secret=True)
    cafile: str | None = setting("IMGPIPELINE_MQTT_CAFILE", None,
                                 "PEM file of the broker's CA: TLS to the broker", shown="no TLS")

    @field_validator("broker")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"IMGPIPELINE_MQTT_BROKER={value!r} is not HOST:PORT")
        return value

    def credentials(self) -> tuple[str | None, str | None]:
        """The user name and password, the password read from the environment when it is used."""
        return self.username, resolved(self.password)
