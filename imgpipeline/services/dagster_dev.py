"""`dagster dev` (webserver, daemon, code server) in the background, for the demo and the UI."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from imgpipeline.services.base import LocalService


class DagsterDev(LocalService):
    """The UI and the daemon that runs frames_sensor and launches detect_frames runs."""

    name = "dagster"
    start_timeout_s = 120.0
    preferred_ports = {"port": 3000}

    def __init__(self, workdir: Path, dagster_home: Path, project_home: Path):
        super().__init__(workdir)
        self.dagster_home = dagster_home
        self.project_home = project_home

    def argv(self, ports: dict[str, int]) -> list[str]:
        return [sys.executable, "-m", "dagster", "dev", "-m", "imgpipeline.definitions",
                "-h", "127.0.0.1", "-p", str(ports["port"])]

    def process_env(self) -> dict[str, str]:
        # Run workers start in other folders: tell them where the project's state lives.
        return {"DAGSTER_HOME": str(self.dagster_home), "IMGPIPELINE_HOME": str(self.project_home),
                "PYTHONUNBUFFERED": "1"}

    def address(self, ports: dict[str, int]) -> str:
        return f"http://127.0.0.1:{ports['port']}"

    def ready(self, ports: dict[str, int]) -> bool:
        if not ports:
            return False
        try:
            with urllib.request.urlopen(self.address(ports) + "/server_info", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False



def dagster_home(state: Path) -> Path:
    """`.imgpipeline/dagster`: DAGSTER_HOME, holding a link to the project's dagster.yaml."""
    home = state / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    for source in (state.parent / "dagster.yaml", Path(__file__).resolve().parents[2] / "dagster.yaml"):
        if source.exists():
            if not link.exists():
                link.symlink_to(source)
            break
    return home
