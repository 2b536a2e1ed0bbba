"""The env files read beside the shell, the variables every setting sees, and the folders set by them.

`imgpipeline services up` writes the addresses of the local services to
`.imgpipeline/services.env`; a `.env` in the project root may hold a person's own settings.
Every setting sees the shell's variables first, then `.env`, then `services.env` (`environment()`);
nothing here writes to `os.environ`. The project home, which says where those files are, comes from
the shell alone (`paths.project_home()`). The CPUs this process may use (`cores()`) are what the
settings that scale with the machine default to.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgpipeline import ConfigError
from imgpipeline.paths import PACKAGE_DIR, project_home, state_dir

# This module's settings, for `imgpipeline settings` and docs/configuration.md: variable, default, meaning.
SETTINGS = [
    ("IMGPIPELINE_MODELS_DIR", "`models/` of the checkout",
     "the model cfg, names, checksums, weights and ONNX form"),
    ("IMGPIPELINE_CACHE_DIR", "`$XDG_CACHE_HOME/imgpipeline`, else `~/.cache/imgpipeline`",
     "broker jars, wheels, sample data, the INT8 model made here"),
]


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
    """Per-machine cache for downloads and made files that outlive a checkout: $IMGPIPELINE_CACHE_DIR."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgpipeline"
    return Path(environment().get("IMGPIPELINE_CACHE_DIR") or default)


def cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: those it may run on, fewer under a CPU quota (a Kubernetes pod's
    CPU limit, cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`), rounded up to whole CPUs. A quota that
    cannot be read or says none leaves the CPUs as they are."""
    import math

    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:  # cgroup v2 seen from outside the process's own namespace: its folder under the root
        own = Path("/proc/self/cgroup").read_text().split("0::", 1)[1].split()[0].strip("/")
    except (OSError, IndexError):
        own = ""
    candidates = [("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")]
    candidates += [(f"{own}/cpu.max", None)] if own else []
    allowed = count
    for quota_file, period_file in candidates:
        try:
            fields = (cgroup / quota_file).read_text().split()
            if period_file:
                fields += (cgroup / period_file).read_text().split()
            quota, period = float(fields[0]), float(fields[1])
        except (OSError, ValueError, IndexError):  # absent, `max` (no quota) or unreadable
            continue
        if quota > 0 and period > 0 and math.isfinite(quota / period):
            allowed = min(allowed, max(1, math.ceil(quota / period)))
    return allowed


def keep_newest(folder: Path, count: int, keeping: Path | None = None) -> None:
    """Of a cache folder's entries (each a folder of what one key made; names starting with a dot are
    under way), the `count` modified last are kept, and `keeping`; the others removed. An entry removed
    while a process reads it is made again by that process."""
    import shutil

    try:
        entries = sorted((p for p in folder.iterdir() if not p.name.startswith(".")),
                         key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for older in entries[count:]:
        if older != keeping:
            shutil.rmtree(older, ignore_errors=True)
