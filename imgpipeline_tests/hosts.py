"""Hosts on one machine: network namespaces, each with its own address on a bridge in the machine's own
namespace (where the services listen), made and removed by the tests that need more than one host (as
root, with `ip` from iproute2). A host is killed by killing every process in its namespace and cut off by
taking its link down."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


def ip(*args: str, namespace: str | None = None) -> str:
    argv = ["ip", *(["-n", namespace] if namespace else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


@dataclass
class Host:
    name: str
    namespace: str
    link: str  # its end of the link, on the bridge: down, the host is cut off
    address: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, argv: list[str], env: dict, log_path) -> subprocess.Popen:
        """A process in the host's namespace, its output in `log_path`."""
        with open(log_path, "ab") as log:
            process = subprocess.Popen(["ip", "netns", "exec", self.namespace, *argv], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def pids(self) -> list[int]:
        return [int(pid) for pid in ip("netns", "pids", self.namespace).split()]

    def commands(self) -> list[str]:
        """The command lines of the processes in the namespace."""
        found = []
        for pid in self.pids():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
                found.append(command.replace(b"\0", b" ").decode(errors="replace")[:160])
            except OSError:
                pass
        return found

    def kill(self) -> int:
        """SIGKILL every process in the namespace (those started there and their children); how many."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.processes:
            process.wait(timeout=30)
        return len(pids)

    def cut(self) -> None:
        ip("link", "set", self.link, "down")


@contextmanager
def hosts(names: list[str]) -> Iterator[tuple[str, dict[str, Host]]]:
    """A bridge with an address for the services and a namespace per name with its own address on it:
    (the services' address, the hosts by name). Every process left in them is killed at the end."""
    tag = uuid.uuid4().hex[:6]
    subnet = f"10.{77 + int(tag[:2], 16) % 100}.{int(tag[2:4], 16)}"
    bridge = f"ibr{tag}"
    made: dict[str, Host] = {}
    ip("link", "add", bridge, "type", "bridge")
    try:
        ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        for n, name in enumerate(names, start=2):
            host = Host(name, f"imgp-{tag}-{name}", f"iv{tag}{n}", f"{subnet}.{n}")
            ip("netns", "add", host.namespace)
            made[name] = host
            ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
            ip("link", "set", host.link, "master", bridge, "up")
            ip("addr", "add", f"{host.address}/24", "dev", "eth0", namespace=host.namespace)
            ip("link", "set", "eth0", "up", namespace=host.namespace)
            ip("link", "set", "lo", "up", namespace=host.namespace)
        yield f"{subnet}.1", made
    finally:
        for host in made.values():
            try:
                host.kill()
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            subprocess.run(["ip", "netns", "delete", host.namespace], capture_output=True)
            subprocess.run(["ip", "link", "delete", host.link], capture_output=True)
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True)
