"""A throwaway PostgreSQL server for the Dagster instance: Debian's packages, a cluster of its own made
by initdb, on a free loopback port, TCP only, password login (scram-sha-256, its verifier stretched
`SCRAM_ITERATIONS` times: `scram_verifier`).

initdb and the server refuse to run as root: as root, both run as the `postgres` user, and the cluster
lives in a folder that user owns under /var/tmp (a project folder under /root is closed to it); the
service's folder keeps the log, the pid and the login. PostgreSQL is a system package, not a Python one:
when it is missing, `imgpipeline services up --instance postgres` says how to install it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from imgpipeline.services.base import LOOPBACK, LocalService, ServiceError

INSTALL_HINT = "apt-get install postgresql (Debian, Ubuntu)"
USER = "imgpipeline"
DATABASE = "dagster"
SERVER_USER = "postgres"
# Key stretching guards a password a person could guess; the service's is 144 random bits (`credentials`),
# out of reach at any count. Every connection pays the count once more in the client (Dagster opens one per
# storage call): PostgreSQL's default of 4096 costs 10-13 ms a login, this count a fraction of one.
# (PostgreSQL 16 and later name the same choice `scram_iterations`.)
SCRAM_ITERATIONS = 32


def postgres_bin(tool: str) -> str | None:
    """A PostgreSQL program: on PATH, else the newest of Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(tool)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return versions[-1] if versions else None


def _as_server_user() -> dict:
    """subprocess arguments that run a program as `postgres` when this process is root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ServiceError(f"PostgreSQL will not run as root and there is no {SERVER_USER!r} user to run it "
                           f"as; {INSTALL_HINT} makes one") from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def scram_verifier(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL keeps of `password` (RFC 5802, RFC 7677): given to initdb in its
    password's place, it is stored as it is, so logins run `iterations` rounds instead of 4096."""
    import base64
    import hmac

    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    encoded = [base64.b64encode(part).decode() for part in (salt, stored, server)]
    return f"SCRAM-SHA-256${iterations}:{encoded[0]}${encoded[1]}:{encoded[2]}"


SUBNET_LOGIN = "host all all samenet scram-sha-256"


class Postgres(LocalService):
    name = "postgres"
    login_user = USER
    preferred_ports = {"port": 5432}
    start_timeout_s = 60.0
    # SIGTERM waits for every client to leave; SIGINT ends their sessions and stops cleanly.
    stop_signal = signal.SIGINT

    @property
    def data(self) -> Path:
        if os.geteuid() != 0:
            return self.workdir / "data"
        tag = hashlib.sha256(str(self.workdir.resolve()).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"imgpipeline-postgres-{tag}"

    def _login_mark(self) -> str:
        """What ties a cluster to the login it was made with (a hash, not the password)."""
        creds = self.credentials()
        return hashlib.sha256(f"{creds['user']}:{creds['password']}".encode()).hexdigest()

    def prepare(self, ports: dict[str, int]) -> None:
        if postgres_bin("postgres") is None or postgres_bin("initdb") is None:
            raise ServiceError(f"PostgreSQL is not installed: {INSTALL_HINT}")
        mark = self.data / "imgpipeline-login.sha256"
        if (self.data / "PG_VERSION").exists():
            if mark.exists() and mark.read_text().strip() == self._login_mark():
                self.admit_subnet()
                return
            # Made with another login (the service's folder was deleted and a new password made): a
            # throwaway cluster, made again rather than left refusing every login.
            shutil.rmtree(self.data)
        owner = _as_server_user()
        self.data.mkdir(parents=True, exist_ok=True, mode=0o700)
        # initdb reads the password (here its verifier) from a file, in a folder of a random name only its
        # owner opens.
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="imgpipeline-initdb-"))
        password_file = folder / "password"
        password_file.touch(mode=0o600)
        password_file.write_text(scram_verifier(self.credentials()["password"]) + "\n")
        if owner:
            for path in (self.data, folder, password_file):
                os.chown(path, owner["user"], owner["group"])
        try:
            result = subprocess.run(
                [postgres_bin("initdb"), "-D", str(self.data), "-U", USER, "--pwfile", str(password_file),
                 "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"],
                capture_output=True, text=True, timeout=120, cwd="/", **owner)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if result.returncode != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            raise ServiceError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")
        mark.write_text(self._login_mark() + "\n")
        self.admit_subnet()

    def admit_subnet(self) -> None:
        """Listening on another address than 127.0.0.1: logins (by password) from the hosts of its subnets."""
        hba = self.data / "pg_hba.conf"
        if self.host != LOOPBACK and SUBNET_LOGIN not in hba.read_text():
            with hba.open("a") as lines:
                lines.write(f"\n{SUBNET_LOGIN}\n")

    def argv(self, ports: dict[str, int]) -> list[str]:
        return [postgres_bin("postgres") or "postgres", "-D", str(self.data), "-p", str(ports["port"]),
                "-c", f"listen_addresses={self.host}", "-c", "unix_socket_directories=",
                # A daemon, a webserver, a code server and each run hold a few connections.
                "-c", "max_connections=200", "-c", "fsync=on"]

    def spawn_options(self) -> dict:
        return _as_server_user()

    def address(self, ports: dict[str, int]) -> str:
        return f"{self.host}:{ports['port']}"

    def url(self, ports: dict[str, int], database: str = DATABASE) -> str:
        creds = self.credentials()
        return f"postgresql://{creds['user']}:{creds['password']}@{self.host}:{ports['port']}/{database}"

    def env(self, ports: dict[str, int]) -> dict[str, str]:
        from imgpipeline.lib.instance import InstanceSettings
        from imgpipeline.resources.settings import env_name

        return {env_name(InstanceSettings, "kind"): "postgres",
                env_name(InstanceSettings, "postgres_url"): self.url(ports)}

    def sql(self, ports: dict[str, int], statement: str, database: str = "postgres") -> str:
        """One statement through psql as the service's user; its output, or ServiceError."""
        creds = self.credentials()
        result = subprocess.run(
            [postgres_bin("psql") or "psql", "-h", self.host, "-p", str(ports["port"]), "-U", creds["user"],
             "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", statement],
            capture_output=True, text=True, timeout=30,
            env={**os.environ, "PGPASSWORD": creds["password"], "PGCONNECT_TIMEOUT": "3"})
        if result.returncode != 0:
            raise ServiceError(f"psql: {result.stderr.strip()}")
        return result.stdout.strip()

    def ready(self, ports: dict[str, int]) -> bool:
        """Ready once it answers a query, with the instance's database made."""
        if not ports:
            return False
        try:
            if self.sql(ports, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'") != "1":
                self.sql(ports, f"CREATE DATABASE {DATABASE}")
            return True
        except (ServiceError, subprocess.TimeoutExpired):
            return False
