"""A local service run in the background: ports, pid file, log, readiness, clean stop."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from imgpipeline.services.process import PortClaims, alive, read_pid, spawn, terminate

LOOPBACK = "127.0.0.1"


class ServiceError(Exception):
    """A local service cannot be started; the message says why and what to do."""


class LocalService:
    """Subclasses name their ports and say how to prepare, start and probe the process."""

    name = "service"
    port_names: tuple[str, ...] = ("port",)
    preferred_ports: dict[str, int] = {}
    start_timeout_s = 60.0

    def __init__(self, workdir: Path, host: str | None = None):
        self.workdir = Path(workdir)
        self.wanted_host = host  # None: where it last listened, else 127.0.0.1
        self.pidfile = self.workdir / f"{self.name}.pid"
        self.logfile = self.workdir / f"{self.name}.log"
        self.statefile = self.workdir / "state.json"

    # -- what subclasses provide -------------------------------------------------
    def prepare(self, ports: dict[str, int]) -> None:
        """Write config, format storage: whatever must exist before the process starts."""

    def argv(self, ports: dict[str, int]) -> list[str]:
        raise NotImplementedError

    def ready(self, ports: dict[str, int]) -> bool:
        """True once the service does real work (not merely listens)."""
        raise NotImplementedError

    def address(self, ports: dict[str, int]) -> str:
        raise NotImplementedError

    def env(self, ports: dict[str, int]) -> dict[str, str]:
        """Settings for clients of this service."""
        return {}

    def process_env(self) -> dict[str, str]:
        """Extra environment of the service's own process."""
        return {}

    login_user = "imgpipeline"

    def credentials(self) -> dict[str, str]:
        """The service's login (`login_user` and a generated password), made once, in a file only its
        owner reads."""
        path = self.workdir / "login.json"
        if not path.exists():
            import secrets

            self.workdir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(json.dumps({"user": self.login_user, "password": secrets.token_urlsafe(18)}))
        return json.loads(path.read_text())

    def spawn_options(self) -> dict:
        """Extra Popen arguments of the service's own process (e.g. the user it runs as)."""
        return {}

    stop_signal = signal.SIGTERM

    # -- shared behaviour --------------------------------------------------------
    @property
    def ports(self) -> dict[str, int]:
        try:
            return json.loads(self.statefile.read_text())["ports"]
        except (OSError, ValueError, KeyError):
            return {}

    @property
    def host(self) -> str:
        """The address the service listens on and its clients are given: the one asked for, else the one
        it last started on, else 127.0.0.1 (this machine only)."""
        return self.wanted_host or self.started_on()

    def started_on(self) -> str:
        try:
            return json.loads(self.statefile.read_text()).get("host") or LOOPBACK
        except (OSError, ValueError, AttributeError):
            return LOOPBACK

    @property
    def pid(self) -> int | None:
        return read_pid(self.pidfile)

    def running(self) -> bool:
        return alive(self.pid)

    def _choose_ports(self, claims: PortClaims) -> dict[str, int]:
        """Reuse the last ports when they are free (the broker's quorum remembers them), else the
        preferred ones, else any; each claimed until the service is up, so that services starting at
        the same time on this machine never pick the same port."""
        previous = self.ports
        if set(previous) == set(self.port_names) and all(claims.claim(p) for p in previous.values()):
            return previous
        claims.release()
        chosen = {}
        for name in self.port_names:
            port = self.preferred_ports.get(name)
            chosen[name] = port if port is not None and claims.claim(port) else claims.any()
        return chosen

    def start(self) -> dict:
        """Start (or find running) and wait until ready; returns status()."""
        if self.running() and self.started_on() == self.host and self.ready(self.ports):
            return self.status()
        self.stop()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with PortClaims() as claims:
            ports = self._choose_ports(claims)
            return self._start_on(ports)

    def _start_on(self, ports: dict[str, int]) -> dict:
        self.prepare(ports)
        self.statefile.write_text(json.dumps({"ports": ports, "host": self.host}))
        started = time.monotonic()
        pid = spawn(self.argv(ports), pidfile=self.pidfile, logfile=self.logfile, cwd=self.workdir,
                    env=self.process_env(), **self.spawn_options())
        deadline = started + self.start_timeout_s
        while time.monotonic() < deadline:
            if not alive(pid):
                raise ServiceError(
                    f"{self.name} exited during start-up; last lines of {self.logfile}:\n"
                    + self.log_tail()
                )
            if self.ready(ports):
                return {**self.status(), "start_s": round(time.monotonic() - started, 2)}
            time.sleep(0.25)
        self.stop()
        raise ServiceError(
            f"{self.name} was not ready after {self.start_timeout_s:.0f} s; "
            f"last lines of {self.logfile}:\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 30.0) -> bool:
        gone = terminate(self.pid, grace_s, self.stop_signal)
        if gone:
            self.pidfile.unlink(missing_ok=True)
        return gone

    def status(self) -> dict:
        ports = self.ports
        running = self.running()
        return {
            "name": self.name,
            "running": running,
            "healthy": running and bool(ports) and self.ready(ports),
            "address": self.address(ports) if ports else None,
            "pid": self.pid if running else None,
            "log": str(self.logfile),
        }

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def answers_http(url: str, answers: tuple[int, ...] = (200,)) -> bool:
    """True once a web service answers the URL with one of `answers` (200: it works)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status in answers
    except urllib.error.HTTPError as error:
        return error.code in answers
    except OSError:
        return False
