"""A local MQTT broker: Debian's Mosquitto on a free loopback port, for MQTT cameras and the bridge.

Sessions persist on disk (QoS 1 messages wait for a bridge that was down). Mosquitto is a system
package, not a Python one: when it is missing, `imgpipeline services up` says how to install it and
goes on without it.
"""

from __future__ import annotations

import shutil
import socket

from imgpipeline.services.base import LocalService

INSTALL_HINT = "apt-get install mosquitto mosquitto-clients (Debian, Ubuntu); MQTT cameras need it"


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if shutil.os.path.exists("/usr/sbin/mosquitto") else None)


class Mosquitto(LocalService):
    name = "mqtt"
    preferred_ports = {"port": 1883}
    start_timeout_s = 20.0

    def prepare(self, ports: dict[str, int]) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        (self.workdir / "mosquitto.conf").write_text(
            f"listener {ports['port']} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {data}/\n"
            "autosave_interval 1\n"
            "log_dest stdout\n"
            # Started as root it would switch to the `mosquitto` user, who cannot write here.
            "user root\n"
            "max_queued_messages 100000\n"
        )

    def argv(self, ports: dict[str, int]) -> list[str]:
        return [mosquitto_path() or "mosquitto", "-c", str(self.workdir / "mosquitto.conf")]

    def address(self, ports: dict[str, int]) -> str:
        return f"127.0.0.1:{ports['port']}"

    def env(self, ports: dict[str, int]) -> dict[str, str]:
        from imgpipeline.resources.mqtt import MqttSettings
        from imgpipeline.resources.settings import env_name

        return {env_name(MqttSettings, "broker"): self.address(ports)}

    def ready(self, ports: dict[str, int]) -> bool:
        if not ports:
            return False
        try:
            with socket.create_connection(("127.0.0.1", ports["port"]), timeout=1):
                return True
        except OSError:
            return False
