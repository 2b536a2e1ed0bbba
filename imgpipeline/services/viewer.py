"""`imgpipeline serve` in the background: the viewer the demo leaves running."""

from __future__ import annotations

import sys
from pathlib import Path

from imgpipeline.paths import HOME_ENV
from imgpipeline.services.base import LocalService, answers_http


class ViewerService(LocalService):
    name = "viewer"
    preferred_ports = {"port": 8765}

    def __init__(self, workdir: Path, project_home: Path):
        super().__init__(workdir)
        self.project_home = project_home

    def argv(self, ports: dict[str, int]) -> list[str]:
        return [sys.executable, "-m", "imgpipeline.cli", "serve", "--host", "127.0.0.1",
                "--port", str(ports["port"])]

    def process_env(self) -> dict[str, str]:
        return {HOME_ENV: str(self.project_home), "PYTHONUNBUFFERED": "1"}

    def address(self, ports: dict[str, int]) -> str:
        return f"http://127.0.0.1:{ports['port']}"

    def ready(self, ports: dict[str, int]) -> bool:
        # A viewer with a login answers 401 until one logs in: it is up all the same.
        return bool(ports) and answers_http(self.address(ports) + "/alerts", answers=(200, 401))
