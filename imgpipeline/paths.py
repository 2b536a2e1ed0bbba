"""Where the project keeps its local state and caches, and the env files read beside the shell.

`imgpipeline services up` writes the addresses of the local services to
`.imgpipeline/services.env`; a `.env` in the project root may hold a person's own settings. A file
the project replaces (a stored object, a journal's window) is replaced durably (`replace_durably`).
Every setting sees the shell's variables first, then `.env`, then `services.env` (`environment()`);
nothing here writes to `os.environ`. `IMGPIPELINE_HOME`, which says where those files are, comes
from the shell alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from imgpipeline import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
HOME_ENV = "IMGPIPELINE_HOME"

# This module's settings, for `imgpipeline settings` and docs/configuration.md: variable, default, meaning.
SETTINGS = [
    (HOME_ENV, "working directory", "where `.imgpipeline/` and `.env` live (from the shell only)"),
    ("IMGPIPELINE_MODELS_DIR", "`models/` of the checkout",
     "the model cfg, names, checksums, weights and ONNX form"),
    ("IMGPIPELINE_CACHE_DIR", "`$XDG_CACHE_HOME/imgpipeline`, else `~/.cache/imgpipeline`",
     "broker jars, wheels, sample data"),
]


def project_home() -> Path:
    """The folder that holds `.imgpipeline/`: $IMGPIPELINE_HOME, else the working directory."""
    return Path(os.environ.get(HOME_ENV) or os.getcwd()).resolve()


def state_dir() -> Path:
    """`.imgpipeline/` under the project home: services, local data, Dagster storage."""
    return project_home() / ".imgpipeline"


def services_env_file() -> Path:
    return state_dir() / "services.env"


def write_services_env(text: str) -> Path:
    """Write `services.env`, readable by its owner only (it may hold the local services' passwords),
    whatever mode an earlier one had."""
    path = services_env_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return path


def env_files() -> list[Path]:
    """The env files settings read, the one that wins first."""
    return [project_home() / ".env", services_env_file()]


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


def models_dir() -> Path:
    """Where the model cfg, names and weights live: $IMGPIPELINE_MODELS_DIR, else `models/`.

    `models/` of the source checkout when the package is installed from one (editable
    install), else `models/` under the project home.
    """
    configured = environment().get("IMGPIPELINE_MODELS_DIR")
    if configured:
        return Path(configured).resolve()
    checkout = PACKAGE_DIR.parent / "models"
    if (checkout / "yolov4-tiny.cfg").exists():
        return checkout
    return project_home() / "models"


def cache_dir() -> Path:
    """Per-machine cache for downloads that outlive a checkout: $IMGPIPELINE_CACHE_DIR."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgpipeline"
    return Path(environment().get("IMGPIPELINE_CACHE_DIR") or default)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; blank lines and `#` comments are ignored."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def environment() -> dict[str, str]:
    """The variables settings see: the shell's, then `.env`'s, then `services.env`'s."""
    merged: dict[str, str] = {}
    for path in reversed(env_files()):
        merged.update(read_env_file(path))
    merged.update(os.environ)
    return merged


def durable_temp(path: Path, file: BinaryIO) -> str:
    """The bytes in a temp file of their own beside `path` (writers of one file never share one), on
    disk before it is renamed: readers never see half a file, and a crash after the rename never loses
    it. A kill before the rename leaves at most a stray `.<name>.<random>.tmp`, which nothing reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(file, out)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def replace_durably(path: Path, file: BinaryIO) -> None:
    """Replace `path` with the bytes of `file`, atomically and on disk: a kill leaves the old file or
    the new one."""
    tmp = durable_temp(path, file)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """A rename is durable once its folder is on disk."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
