"""A local MQTT broker: Debian's Mosquitto on a free loopback port, for MQTT cameras and the bridge.

Sessions persist on disk (QoS 1 messages wait for a bridge that was down). Mosquitto is a system
package, not a Python one: when it is missing, `imgpipeline services up` says how to install it and
goes on without it. With `secure`, its one listener speaks TLS only (a self-made CA, as the Kafka
broker's SASL_SSL listener) and lets in only the users of its password file, as a broker facing real
cameras would.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from imgpipeline.services.base import LocalService, ServiceError

INSTALL_HINT = "apt-get install mosquitto mosquitto-clients (Debian, Ubuntu); MQTT cameras need it"
MQTT_USER = "imgpipeline"


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if shutil.os.path.exists("/usr/sbin/mosquitto") else None)


class Mosquitto(LocalService):
    name = "mqtt"
    login_user = MQTT_USER
    preferred_ports = {"port": 1883}
    start_timeout_s = 20.0

    def __init__(self, workdir: Path, secure: bool = False):
        super().__init__(workdir)
        self.secure = secure
        if secure:
            self.preferred_ports = {"port": 8883}

    def ca_file(self) -> Path:
        return self.workdir / "tls" / "ca.pem"

    def _password_file(self) -> Path:
        """The password file, hashed by mosquitto_passwd -U (the password never on a command line)."""
        path = self.workdir / "passwords"
        creds = self.credentials()
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)
        path.write_text(f"{creds['user']}:{creds['password']}\n")
        tool = shutil.which("mosquitto_passwd")
        result = subprocess.run([tool or "mosquitto_passwd", "-U", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            raise ServiceError(f"mosquitto_passwd -U failed: {result.stdout}{result.stderr}")
        return path

    def listener(self, ports: dict[str, int]) -> list[str]:
        lines = [f"listener {ports['port']} 127.0.0.1"]
        if not self.secure:
            return [*lines, "allow_anonymous true"]
        import secrets

        from imgpipeline.services.kafka_broker import make_tls

        # make_tls also bundles a PKCS12 keystore, which Mosquitto does not read: any password will do.
        tls = make_tls(self.workdir / "tls", secrets.token_urlsafe(18)).parent
        return [*lines, f"cafile {tls / 'ca.pem'}", f"certfile {tls / 'broker.pem'}",
                f"keyfile {tls / 'broker.key'}", "allow_anonymous false",
                f"password_file {self._password_file()}"]

    def prepare(self, ports: dict[str, int]) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        (self.workdir / "mosquitto.conf").write_text("\n".join([
            *self.listener(ports),
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 1",
            "log_dest stdout",
            # Started as root it would switch to the `mosquitto` user, who cannot write here.
            "user root",
            "max_queued_messages 100000",
            "",
        ]))

    def argv(self, ports: dict[str, int]) -> list[str]:
        return [mosquitto_path() or "mosquitto", "-c", str(self.workdir / "mosquitto.conf")]

    def address(self, ports: dict[str, int]) -> str:
        return f"127.0.0.1:{ports['port']}"

    def env(self, ports: dict[str, int]) -> dict[str, str]:
        """Client settings: the broker, and with `secure` the login and the CA file too."""
        from imgpipeline.resources.mqtt import MqttSettings
        from imgpipeline.resources.settings import env_name

        values = {"broker": self.address(ports)}
        if self.secure:
            creds = self.credentials()
            values.update(username=creds["user"], password=creds["password"], cafile=str(self.ca_file()))
        return {env_name(MqttSettings, field): value for field, value in values.items()}

    def ready(self, ports: dict[str, int]) -> bool:
        if not ports:
            return False
        try:
            with socket.create_connection(("127.0.0.1", ports["port"]), timeout=1):
                return True
        except OSError:
            return False
