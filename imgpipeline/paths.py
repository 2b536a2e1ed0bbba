"""Where the project keeps its local state: the project home, its `.imgpipeline/` folder and the files
a person edits there. `IMGPIPELINE_HOME`, which says where the home is, comes from the shell alone;
the env files kept there and the folders they may set are `environment.py`'s."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
HOME_ENV = "IMGPIPELINE_HOME"

# This module's settings, for `imgpipeline settings` and docs/configuration.md: variable, default, meaning.
SETTINGS = [
    (HOME_ENV, "working directory", "where `.imgpipeline/` and `.env` live (from the shell only)"),
]


def project_home() -> Path:
    """The folder that holds `.imgpipeline/`: $IMGPIPELINE_HOME, else the working directory."""
    return Path(os.environ.get(HOME_ENV) or os.getcwd()).resolve()


def state_dir() -> Path:
    """`.imgpipeline/` under the project home: services, local data, Dagster storage."""
    return project_home() / ".imgpipeline"


def project_file(configured: str, default_name: str) -> Path | None:
    """A file a person edits (zones, alert rules): the configured path, else `default_name` in the project
    home, else the checkout's; None when it is set to `none` or there is none."""
    if configured.strip().lower() == "none":
        return None
    if configured:
        return Path(configured).expanduser().resolve()
    for folder in (project_home(), PACKAGE_DIR.parent):
        if (folder / default_name).exists():
            return folder / default_name
    return None
